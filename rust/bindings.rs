//! The thin PyO3 layer: `fwlora._core`. Every failure of the core becomes one Python
//! exception type, `FisherCoreError` (a `ValueError`), with the core's message.

use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::core::{codec, Config, CoreError, FisherState, Normalization, Schedule, StateParts};

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

/// Reads a 1-D float64 array without copying, or any sequence of floats with one copy.
fn read_row(g: &Bound<'_, PyAny>) -> PyResult<Vec<f64>> {
    if let Ok(arr) = g.extract::<PyReadonlyArray1<f64>>() {
        return Ok(arr.as_array().to_vec());
    }
    g.extract::<Vec<f64>>()
        .map_err(|_| arg_err("g", "expected a 1-D float64 array or a sequence of floats"))
}

/// State of Fisher-Weighted LoRA for `num_matrices` adapter matrices.
#[pyclass(module = "fwlora._core", name = "FisherCore", from_py_object)]
#[derive(Clone)]
pub struct PyFisherCore {
    inner: FisherState,
}

#[pymethods]
impl PyFisherCore {
    #[new]
    #[pyo3(signature = (num_matrices, *, alpha=0.98, warmup=500, lam=1e-4,
                        normalization="sum", schedule="constant", ramp_steps=0, refresh_every=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        num_matrices: i64,
        alpha: f64,
        warmup: i64,
        lam: f64,
        normalization: &str,
        schedule: &str,
        ramp_steps: i64,
        refresh_every: i64,
    ) -> PyResult<Self> {
        let count = |name: &'static str, v: i64, min: i64| -> PyResult<u64> {
            if v < min {
                Err(arg_err(
                    name,
                    format!("expected an integer >= {min}, got {v}"),
                ))
            } else {
                Ok(v as u64)
            }
        };
        let num_matrices = count("num_matrices", num_matrices, 1)?;
        let config = Config::new(
            alpha,
            count("warmup", warmup, 1)?,
            lam,
            Normalization::parse(normalization).map_err(err)?,
            Schedule::parse(schedule, count("ramp_steps", ramp_steps, 0)?).map_err(err)?,
            count("refresh_every", refresh_every, 0)?,
        )
        .map_err(err)?;
        let inner = FisherState::new(num_matrices as usize, config).map_err(err)?;
        Ok(PyFisherCore { inner })
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

    /// λ·(1 − I_m)·scale(step) for optimizer step `step`; None during warm-up.
    fn factors<'py>(&self, py: Python<'py>, step: u64) -> Option<Bound<'py, PyArray1<f64>>> {
        self.inner.factors(step).map(|f| PyArray1::from_vec(py, f))
    }

    /// λ·(1 − I_m) without the schedule; None during warm-up.
    fn base_factors<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray1<f64>>> {
        self.inner.base_factors().map(|f| PyArray1::from_vec(py, f))
    }

    /// The schedule's multiplier at optimizer step `step` (0 during warm-up).
    fn schedule_scale(&self, step: u64) -> f64 {
        self.inner.schedule_scale(step)
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
    /// Observations still accepted before freezing (None in refresh mode: unbounded).
    #[getter]
    fn remaining_warmup(&self) -> Option<u64> {
        self.inner.remaining_observations()
    }
    #[getter]
    fn alpha(&self) -> f64 {
        self.inner.config().alpha
    }
    #[getter]
    fn warmup(&self) -> u64 {
        self.inner.config().warmup
    }
    #[getter]
    fn lam(&self) -> f64 {
        self.inner.config().lam
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
            .map(|inner| PyFisherCore { inner })
            .map_err(err)
    }

    /// Plain-Python form: ints, floats, strings, lists and None only.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.inner;
        let c = s.config();
        let d = PyDict::new(py);
        d.set_item("format_version", 1)?;
        d.set_item("num_matrices", s.num_matrices())?;
        d.set_item("alpha", c.alpha)?;
        d.set_item("warmup", c.warmup)?;
        d.set_item("lam", c.lam)?;
        d.set_item("normalization", c.normalization.name())?;
        d.set_item("schedule", c.schedule.name())?;
        d.set_item("ramp_steps", c.schedule.ramp_steps())?;
        d.set_item("refresh_every", c.refresh_every)?;
        d.set_item("step", s.step())?;
        d.set_item("skipped", s.skipped())?;
        d.set_item("fisher", s.fisher().to_vec())?;
        d.set_item("importance", s.importance().map(<[f64]>::to_vec))?;
        Ok(d)
    }

    #[staticmethod]
    fn from_dict(d: &Bound<'_, PyAny>) -> PyResult<Self> {
        let d = d
            .cast::<PyDict>()
            .map_err(|_| arg_err("state", "expected a dict made by FisherCore.to_dict()"))?;
        fn field<'py, T: for<'a> FromPyObject<'a, 'py>>(
            d: &Bound<'py, PyDict>,
            key: &'static str,
            what: &str,
        ) -> PyResult<T> {
            let v = d
                .get_item(key)?
                .ok_or_else(|| arg_err("state", format!("missing key {key:?}")))?;
            v.extract::<T>()
                .map_err(|_| arg_err("state", format!("key {key:?}: expected {what}")))
        }
        let version: i64 = field(d, "format_version", "an integer")?;
        if version != 1 {
            return Err(arg_err(
                "state",
                format!("unsupported format_version {version}"),
            ));
        }
        let normalization: String = field(d, "normalization", "a string")?;
        let schedule: String = field(d, "schedule", "a string")?;
        let ramp_steps: u64 = field(d, "ramp_steps", "an integer >= 0")?;
        let config = Config {
            alpha: field(d, "alpha", "a float")?,
            warmup: field(d, "warmup", "an integer >= 1")?,
            lam: field(d, "lam", "a float")?,
            normalization: Normalization::parse(&normalization).map_err(err)?,
            schedule: Schedule::parse(&schedule, ramp_steps).map_err(err)?,
            refresh_every: field(d, "refresh_every", "an integer >= 0")?,
        };
        let fisher: Vec<f64> = field(d, "fisher", "a list of floats")?;
        let m: u64 = field(d, "num_matrices", "an integer >= 1")?;
        if m != fisher.len() as u64 {
            return Err(arg_err(
                "state",
                format!("num_matrices={m} but fisher has {} values", fisher.len()),
            ));
        }
        let parts = StateParts {
            config,
            fisher,
            step: field(d, "step", "an integer >= 0")?,
            skipped: field(d, "skipped", "an integer >= 0")?,
            importance: field(d, "importance", "a list of floats or None")?,
        };
        FisherState::from_parts(parts)
            .map(|inner| PyFisherCore { inner })
            .map_err(err)
    }

    /// Replaces this state by `other`'s; refuses one for a different number of matrices.
    fn load(&mut self, other: &Bound<'_, PyAny>) -> PyResult<()> {
        let other: PyFisherCore = if let Ok(core) = other.extract::<PyFisherCore>() {
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
            .extract::<PyFisherCore>()
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
            "FisherCore(num_matrices={}, alpha={}, warmup={}, lam={}, normalization={:?}, \
             schedule={:?}, step={}, skipped={}, phase={:?})",
            s.num_matrices(),
            c.alpha,
            c.warmup,
            c.lam,
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
    m.add("FisherCoreError", m.py().get_type::<FisherCoreError>())?;
    m.add_class::<PyFisherCore>()?;
    Ok(())
}
