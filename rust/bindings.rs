//! The thin PyO3 layer: `fwlora._core`. Every failure of the core becomes one Python
//! exception type, `FisherCoreError` (a `ValueError`), with the core's message. The dict
//! form of a state is derived from the core's field schema (`codec::SCHEMA`), like the bytes.

use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::core::codec::{self, Kind, Value};
use crate::core::{Config, CoreError, Normalization, Schedule};

pyo3::create_exception!(
    _core,
    FisherCoreError,
    PyValueError,
    "Invalid argument or state for the FW-LoRA core."
);

fn err(e: CoreError) -> PyErr {
    FisherCoreError::new_err(e.to_string())
}

fn arg_err(arg: &'static str, msg: impl Into<String>) -> PyErr {
    err(CoreError::arg(arg, msg))
}

/// A count from Python: an int >= `min` (a negative one is this error, not OverflowError).
fn count(name: &'static str, v: i64, min: i64) -> PyResult<u64> {
    if v < min {
        Err(arg_err(
            name,
            format!("expected an integer >= {min}, got {v}"),
        ))
    } else {
        Ok(v as u64)
    }
}

/// Reads a 1-D float64 array without copying, or any sequence of floats with one copy.
fn read_row(g: &Bound<'_, PyAny>) -> PyResult<Vec<f64>> {
    if g.is_instance_of::<PyBytes>() {
        return Err(arg_err(
            "g",
            "expected a 1-D float64 array or a sequence of floats, got bytes",
        ));
    }
    if let Ok(arr) = g.extract::<PyReadonlyArray1<f64>>() {
        return Ok(arr.as_array().to_vec());
    }
    g.extract::<Vec<f64>>()
        .map_err(|_| arg_err("g", "expected a 1-D float64 array or a sequence of floats"))
}

/// State of Fisher-Weighted LoRA for `num_matrices` adapter matrices.
#[pyclass(module = "fwlora._core", name = "FisherCore", from_py_object)]
#[derive(Clone)]
pub struct FisherCore {
    inner: crate::core::FisherCore,
}

#[pymethods]
impl FisherCore {
    /// Options left out (None) take the core's defaults (`FisherCore.defaults()`).
    #[new]
    #[pyo3(signature = (num_matrices, *, alpha=None, warmup=None, lam=None,
                        normalization=None, schedule=None, ramp_steps=None, refresh_every=None,
                        target_ratio=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        num_matrices: i64,
        alpha: Option<f64>,
        warmup: Option<i64>,
        lam: Option<f64>,
        normalization: Option<&str>,
        schedule: Option<&str>,
        ramp_steps: Option<i64>,
        refresh_every: Option<i64>,
        target_ratio: Option<f64>,
    ) -> PyResult<Self> {
        let d = Config::default();
        // target_ratio is lam="auto": λ is calibrated later, so it cannot also be given.
        let lam = match (lam, target_ratio) {
            (Some(lam), Some(_)) => {
                return Err(arg_err(
                    "target_ratio",
                    format!(
                        "only with lam=\"auto\" (target_ratio calibrates λ), got lam={lam}; \
                         pass one of them"
                    ),
                ))
            }
            (lam, None) => lam.or(d.lam),
            (None, Some(_)) => None,
        };
        let num_matrices = count("num_matrices", num_matrices, 1)?;
        let normalization = match normalization {
            Some(name) => Normalization::parse(name).map_err(err)?,
            None => d.normalization,
        };
        let ramp_steps = match ramp_steps {
            Some(v) => count("ramp_steps", v, 0)?,
            None => d.schedule.ramp_steps(),
        };
        let config = Config::new(
            alpha.unwrap_or(d.alpha),
            warmup.map_or(Ok(d.warmup), |v| count("warmup", v, 1))?,
            lam,
            normalization,
            Schedule::parse(schedule.unwrap_or(d.schedule.name()), ramp_steps).map_err(err)?,
            refresh_every.map_or(Ok(d.refresh_every), |v| count("refresh_every", v, 0))?,
            target_ratio,
        )
        .map_err(err)?;
        let inner = crate::core::FisherCore::new(num_matrices as usize, config).map_err(err)?;
        Ok(FisherCore { inner })
    }

    /// The core's default options, {name: value}: the one place they are defined.
    #[staticmethod]
    fn defaults<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = Config::default();
        let out = PyDict::new(py);
        out.set_item("alpha", d.alpha)?;
        out.set_item("warmup", d.warmup)?;
        out.set_item("lam", d.lam)?;
        out.set_item("normalization", d.normalization.name())?;
        out.set_item("schedule", d.schedule.name())?;
        out.set_item("ramp_steps", d.schedule.ramp_steps())?;
        out.set_item("refresh_every", d.refresh_every)?;
        out.set_item("target_ratio", d.target_ratio)?;
        Ok(out)
    }

    /// One optimizer step's squared gradient norms (length M). False when skipped.
    fn observe(&mut self, g: &Bound<'_, PyAny>) -> PyResult<bool> {
        if let Ok(arr) = g.extract::<PyReadonlyArray1<f64>>() {
            if let Ok(slice) = arr.as_slice() {
                return self.inner.observe(slice).map_err(err);
            }
        }
        let row = read_row(g)?;
        self.inner.observe(&row).map_err(err)
    }

    /// A (steps x M) float64 array of observations applied in order. Returns the count skipped.
    fn observe_batch(&mut self, g: &Bound<'_, PyAny>) -> PyResult<u64> {
        let arr = g.extract::<PyReadonlyArray2<f64>>().map_err(|_| {
            arg_err(
                "g",
                "expected a 2-D float64 array of shape (steps, num_matrices)",
            )
        })?;
        let steps = arr.shape()[0];
        let m = self.inner.num_matrices();
        if arr.shape()[1] != m {
            return Err(arg_err(
                "g",
                format!("expected shape (steps, {m}), got {:?}", arr.shape()),
            ));
        }
        // `as_slice` also accepts Fortran-ordered memory, which is column-major: only a
        // C-contiguous array is read in place; anything else is copied in logical order.
        match arr.as_slice().ok().filter(|_| arr.is_c_contiguous()) {
            Some(slice) => self.inner.observe_batch(slice, steps),
            None => {
                let owned: Vec<f64> = arr.as_array().iter().copied().collect();
                self.inner.observe_batch(&owned, steps)
            }
        }
        .map_err(err)
    }

    /// Counts `steps` optimizer steps without observation (only once frozen). Returns the step.
    #[pyo3(signature = (steps=1))]
    fn advance(&mut self, steps: i64) -> PyResult<u64> {
        let steps = count("steps", steps, 0)?;
        self.inner.advance(steps).map_err(err)
    }

    /// λ·(1 − I_m)·scale(step) for optimizer step `step`; None during warm-up.
    fn factors<'py>(
        &self,
        py: Python<'py>,
        step: i64,
    ) -> PyResult<Option<Bound<'py, PyArray1<f64>>>> {
        let step = count("step", step, 0)?;
        Ok(self.inner.factors(step).map(|f| PyArray1::from_vec(py, f)))
    }

    /// `lam="auto"`: sets λ = target_ratio·sqrt(task_sq / unit_penalty_sq) once and returns
    /// it; None (nothing changed) when the inputs give no λ (0 or non-finite).
    fn calibrate(&mut self, task_sq: f64, unit_penalty_sq: f64) -> PyResult<Option<f64>> {
        self.inner.calibrate(task_sq, unit_penalty_sq).map_err(err)
    }

    /// λ·(1 − I_m) without the schedule; None during warm-up (and before calibration).
    fn base_factors<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray1<f64>>> {
        self.inner.base_factors().map(|f| PyArray1::from_vec(py, f))
    }

    /// The schedule's multiplier at optimizer step `step` (0 during warm-up).
    fn schedule_scale(&self, step: i64) -> PyResult<f64> {
        Ok(self.inner.schedule_scale(count("step", step, 0)?))
    }

    #[getter]
    fn fisher<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        PyArray1::from_slice(py, self.inner.fisher())
    }

    #[getter]
    fn importance<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray1<f64>>> {
        self.inner.importance().map(|i| PyArray1::from_slice(py, i))
    }

    #[getter]
    fn num_matrices(&self) -> usize {
        self.inner.num_matrices()
    }
    #[getter]
    fn step(&self) -> u64 {
        self.inner.step()
    }
    #[getter]
    fn skipped(&self) -> u64 {
        self.inner.skipped()
    }
    #[getter]
    fn phase(&self) -> &'static str {
        self.inner.phase().name()
    }
    /// Whether every optimizer step must bring an observation (warm-up, refreshing).
    #[getter]
    fn observing(&self) -> bool {
        self.inner.phase().observing()
    }
    /// Observations until the importances are next (re)computed; None once frozen for good.
    #[getter]
    fn steps_until_update(&self) -> Option<u64> {
        self.inner.steps_until_update()
    }
    #[getter]
    fn alpha(&self) -> f64 {
        self.inner.config().alpha
    }
    #[getter]
    fn warmup(&self) -> u64 {
        self.inner.config().warmup
    }
    /// λ in effect; None with target_ratio until it is calibrated.
    #[getter]
    fn lam(&self) -> Option<f64> {
        self.inner.config().lam
    }
    /// The ratio ‖∇P‖/‖∇L_task‖ λ is calibrated to (lam="auto"); None when λ is set by hand.
    #[getter]
    fn target_ratio(&self) -> Option<f64> {
        self.inner.config().target_ratio
    }
    #[getter]
    fn normalization(&self) -> &'static str {
        self.inner.config().normalization.name()
    }
    #[getter]
    fn schedule(&self) -> &'static str {
        self.inner.config().schedule.name()
    }
    #[getter]
    fn ramp_steps(&self) -> u64 {
        self.inner.config().schedule.ramp_steps()
    }
    #[getter]
    fn refresh_every(&self) -> u64 {
        self.inner.config().refresh_every
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &codec::encode(&self.inner))
    }

    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        codec::decode(data)
            .map(|inner| FisherCore { inner })
            .map_err(err)
    }

    /// Plain-Python form: ints, floats, strings, lists and None only (the core's schema).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("format_version", codec::VERSION)?;
        for (name, value) in codec::to_fields(&self.inner) {
            match value {
                Value::U64(v) => d.set_item(name, v)?,
                Value::F64(v) => d.set_item(name, v)?,
                Value::OptF64(v) => d.set_item(name, v)?,
                Value::Normalization(n) => d.set_item(name, n.name())?,
                Value::Schedule(s) => d.set_item(name, s)?,
                Value::F64s(v) => d.set_item(name, v)?,
                Value::OptF64s(v) => d.set_item(name, v)?,
            }
        }
        Ok(d)
    }

    #[staticmethod]
    fn from_dict(d: &Bound<'_, PyAny>) -> PyResult<Self> {
        let d = d
            .cast::<PyDict>()
            .map_err(|_| arg_err("state", "expected a dict made by FisherCore.to_dict()"))?;
        let version: i64 = d
            .get_item("format_version")?
            .and_then(|v| v.extract().ok())
            .ok_or_else(|| arg_err("state", "missing or bad key \"format_version\""))?;
        if !(i64::from(codec::OLDEST_VERSION)..=i64::from(codec::VERSION)).contains(&version) {
            return Err(arg_err(
                "state",
                format!(
                    "unsupported format_version {version} (this build reads {} to {})",
                    codec::OLDEST_VERSION,
                    codec::VERSION
                ),
            ));
        }
        let mut py_error: Option<PyErr> = None;
        let state = codec::from_fields(|name, kind| {
            let migrated = (version == 2)
                .then(|| {
                    codec::migrated_v2(name, || {
                        read_field(d, name, Kind::F64)
                            .map_err(|e| CoreError::arg("state", e.to_string()))
                            .and_then(|v| match v {
                                Value::F64(x) => Ok(x),
                                _ => Err(CoreError::arg("state", "key \"lam\": expected a float")),
                            })
                    })
                })
                .flatten();
            if let Some(v) = migrated {
                return v;
            }
            read_field(d, name, kind).map_err(|e| {
                let msg = e.to_string();
                py_error = Some(e);
                CoreError::arg("state", msg)
            })
        });
        if let Some(e) = py_error {
            return Err(e);
        }
        state.map(|inner| FisherCore { inner }).map_err(err)
    }

    /// Replaces this state by `other`'s; refuses one for a different number of matrices.
    fn load(&mut self, other: &Bound<'_, PyAny>) -> PyResult<()> {
        let other: FisherCore = if let Ok(core) = other.extract::<FisherCore>() {
            core
        } else if let Ok(data) = other.extract::<&[u8]>() {
            Self::from_bytes(data)?
        } else if other.cast::<PyDict>().is_ok() {
            Self::from_dict(other)?
        } else {
            return Err(arg_err(
                "state",
                "expected a FisherCore, the bytes of to_bytes() or the dict of to_dict()",
            ));
        };
        self.inner.load(other.inner).map_err(err)
    }

    fn copy(&self) -> Self {
        self.clone()
    }

    fn __copy__(&self) -> Self {
        self.clone()
    }

    fn __deepcopy__(&self, _memo: &Bound<'_, PyAny>) -> Self {
        self.clone()
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .extract::<FisherCore>()
            .map(|o| o.inner == self.inner)
            .unwrap_or(false)
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyBytes>,))> {
        let ctor = slf.get_type().getattr("from_bytes")?;
        Ok((ctor, (slf.borrow().to_bytes(py),)))
    }

    fn __repr__(&self) -> String {
        let s = &self.inner;
        let c = s.config();
        format!(
            "FisherCore(num_matrices={}, alpha={}, warmup={}, lam={}, target_ratio={}, \
             normalization={:?}, schedule={:?}, step={}, skipped={}, phase={:?})",
            s.num_matrices(),
            c.alpha,
            c.warmup,
            c.lam.map_or("None".into(), |v| v.to_string()),
            c.target_ratio.map_or("None".into(), |v| v.to_string()),
            c.normalization.name(),
            c.schedule.name(),
            s.step(),
            s.skipped(),
            s.phase().name()
        )
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // The core's limits, defined once in rust/core/config.rs and read by Python.
    m.add("MAX_TARGET_RATIO", crate::core::config::MAX_TARGET_RATIO)?;
    let error = m.py().get_type::<FisherCoreError>();
    // Recorded as `_core.FisherCoreError` by the macro; pickling needs the importable path.
    error.setattr("__module__", "fwlora._core")?;
    m.add("FisherCoreError", error)?;
    m.add_class::<FisherCore>()?;
    Ok(())
}

/// One schema field of a dict from `to_dict()`, converted to the core's value kind.
fn read_field(d: &Bound<'_, PyDict>, name: &'static str, kind: Kind) -> PyResult<Value> {
    let v = d
        .get_item(name)?
        .ok_or_else(|| arg_err("state", format!("missing key {name:?}")))?;
    let bad = |what: &str| arg_err("state", format!("key {name:?}: expected {what}"));
    Ok(match kind {
        Kind::U64 => Value::U64(v.extract().map_err(|_| bad("an integer >= 0"))?),
        Kind::F64 => Value::F64(v.extract().map_err(|_| bad("a float"))?),
        Kind::OptF64 => Value::OptF64(v.extract().map_err(|_| bad("a float or None"))?),
        Kind::Normalization => {
            let s: String = v.extract().map_err(|_| bad("a string"))?;
            Value::Normalization(Normalization::parse(&s).map_err(err)?)
        }
        Kind::Schedule => {
            let s: String = v.extract().map_err(|_| bad("a string"))?;
            // Only the name here; from_fields checks it with ramp_steps.
            Value::Schedule(codec::schedule_name(&s).ok_or_else(|| {
                arg_err(
                    "schedule",
                    format!("expected one of \"constant\", \"ramp\", got {s:?}"),
                )
            })?)
        }
        Kind::F64s => Value::F64s(v.extract().map_err(|_| bad("a list of floats"))?),
        Kind::OptF64s => Value::OptF64s(v.extract().map_err(|_| bad("a list of floats or None"))?),
    })
}
