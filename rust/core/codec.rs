//! The state's one field schema, and the byte format derived from it.
//!
//! [`SCHEMA`] lists every field of a [`FisherCore`] with its kind, in order; [`to_fields`]
//! and [`from_fields`] convert a state to and from those values (the latter validates through
//! [`FisherCore::from_parts`]). Two forms are derived from the schema and nothing else:
//! * bytes (here): magic `FWLS`, u16 version, then each field in schema order, little-endian
//!   (u64, f64, enums as a u8 code, an optional float as a u8 flag and f64, `fisher` as
//!   M × f64, `importance` as a u8 flag and M × f64). Decoding checks every length before reading, so corrupt or truncated input is
//!   an error, never a panic.
//! * the Python dict (the binding): field name → int, float, str, list or None.

use super::config::{Config, Normalization, Schedule};
use super::error::CoreError;
use super::state::{FisherCore, StateParts};

const MAGIC: &[u8; 4] = b"FWLS";
/// Version 3: `lam` is optional (None: `lam="auto"`, not yet calibrated) and `target_ratio`
/// follows it. Version 2 (`lam` a plain float, no `target_ratio`) is read as a hand-set λ;
/// version 1 (whose `step` stopped counting at the warm-up's end) is refused.
pub const VERSION: u16 = 3;
/// The oldest version read (and migrated): see [`migrated_v2`].
pub const OLDEST_VERSION: u16 = 2;

/// What a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    U64,
    F64,
    /// None or one float.
    OptF64,
    Normalization,
    Schedule,
    /// M floats (M is the `num_matrices` field, which comes first).
    F64s,
    /// None or M floats.
    OptF64s,
}

/// A field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U64(u64),
    F64(f64),
    OptF64(Option<f64>),
    Normalization(Normalization),
    Schedule(&'static str),
    F64s(Vec<f64>),
    OptF64s(Option<Vec<f64>>),
}

/// Every field of a state, in order. `num_matrices` is first so readers know M.
pub const SCHEMA: [(&str, Kind); 13] = [
    ("num_matrices", Kind::U64),
    ("alpha", Kind::F64),
    ("warmup", Kind::U64),
    ("lam", Kind::OptF64),
    ("target_ratio", Kind::OptF64),
    ("normalization", Kind::Normalization),
    ("schedule", Kind::Schedule),
    ("ramp_steps", Kind::U64),
    ("refresh_every", Kind::U64),
    ("step", Kind::U64),
    ("skipped", Kind::U64),
    ("fisher", Kind::F64s),
    ("importance", Kind::OptF64s),
];

pub fn to_fields(state: &FisherCore) -> Vec<(&'static str, Value)> {
    let c = state.config();
    let values = [
        Value::U64(state.num_matrices() as u64),
        Value::F64(c.alpha),
        Value::U64(c.warmup),
        Value::OptF64(c.lam),
        Value::OptF64(c.target_ratio),
        Value::Normalization(c.normalization),
        Value::Schedule(c.schedule.name()),
        Value::U64(c.schedule.ramp_steps()),
        Value::U64(c.refresh_every),
        Value::U64(state.step()),
        Value::U64(state.skipped()),
        Value::F64s(state.fisher().to_vec()),
        Value::OptF64s(state.importance().map(<[f64]>::to_vec)),
    ];
    SCHEMA.iter().map(|(name, _)| *name).zip(values).collect()
}

/// A state from its fields; `get(name, kind)` supplies each one, in schema order.
pub fn from_fields(
    mut get: impl FnMut(&'static str, Kind) -> Result<Value, CoreError>,
) -> Result<FisherCore, CoreError> {
    fn wrong(name: &str, kind: Kind) -> CoreError {
        CoreError::arg(
            "state",
            format!("field {name:?}: expected a value of kind {kind:?}"),
        )
    }
    macro_rules! field {
        ($name:literal, $kind:ident) => {
            match get($name, Kind::$kind)? {
                Value::$kind(v) => v,
                _ => return Err(wrong($name, Kind::$kind)),
            }
        };
    }
    let m = field!("num_matrices", U64);
    let alpha = field!("alpha", F64);
    let warmup = field!("warmup", U64);
    let lam = field!("lam", OptF64);
    let target_ratio = field!("target_ratio", OptF64);
    let normalization = field!("normalization", Normalization);
    let schedule = field!("schedule", Schedule);
    let ramp_steps = field!("ramp_steps", U64);
    let refresh_every = field!("refresh_every", U64);
    let step = field!("step", U64);
    let skipped = field!("skipped", U64);
    let fisher = field!("fisher", F64s);
    let importance = field!("importance", OptF64s);
    if fisher.len() as u64 != m {
        return Err(CoreError::arg(
            "state",
            format!("num_matrices={m} but fisher has {} values", fisher.len()),
        ));
    }
    let config = Config {
        alpha,
        warmup,
        lam,
        normalization,
        schedule: Schedule::parse(schedule, ramp_steps)?,
        refresh_every,
        target_ratio,
    };
    FisherCore::from_parts(StateParts {
        config,
        fisher,
        step,
        skipped,
        importance,
    })
}

pub fn encode(state: &FisherCore) -> Vec<u8> {
    let m = state.num_matrices();
    let mut out = Vec::with_capacity(96 + 16 * m);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    for (_, value) in to_fields(state) {
        match value {
            Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::OptF64(v) => {
                out.push(v.is_some() as u8);
                out.extend_from_slice(&v.unwrap_or(0.0).to_le_bytes());
            }
            Value::Normalization(n) => out.push(n.code()),
            Value::Schedule(name) => out.push(schedule_code(name)),
            Value::F64s(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Value::OptF64s(v) => {
                out.push(v.is_some() as u8);
                for x in v.unwrap_or_default() {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
    }
    out
}

const SCHEDULES: [&str; 2] = ["constant", "ramp"];

/// The schedule name as the schema holds it, or None for an unknown name.
pub fn schedule_name(name: &str) -> Option<&'static str> {
    SCHEDULES.iter().copied().find(|s| *s == name)
}

fn schedule_code(name: &str) -> u8 {
    SCHEDULES
        .iter()
        .position(|s| *s == name)
        .expect("a known schedule") as u8
}

/// A version-2 field as this version holds it: `lam` was a plain float (always set by hand)
/// and `target_ratio` did not exist. None: the field is read as it is.
pub fn migrated_v2(
    name: &str,
    read_f64: impl FnOnce() -> Result<f64, CoreError>,
) -> Option<Result<Value, CoreError>> {
    match name {
        "lam" => Some(read_f64().map(|v| Value::OptF64(Some(v)))),
        "target_ratio" => Some(Ok(Value::OptF64(None))),
        _ => None,
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    version: u16,
    /// M, once read: bounds every list before anything is allocated.
    m: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CoreError> {
        if self.buf.len() < n {
            return Err(CoreError::Decode(format!(
                "truncated: {what} needs {n} byte(s), {} left",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], CoreError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> Result<u8, CoreError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn f64s(&mut self, what: &str) -> Result<Vec<f64>, CoreError> {
        let bytes = self
            .m
            .checked_mul(8)
            .ok_or_else(|| CoreError::Decode(format!("{what}: length {} overflows", self.m)))?;
        Ok(self
            .take(bytes, what)?
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")))
            .collect())
    }
    fn value(&mut self, name: &'static str, kind: Kind) -> Result<Value, CoreError> {
        if self.version == 2 {
            if let Some(v) = migrated_v2(name, || Ok(f64::from_le_bytes(self.array(name)?))) {
                return v;
            }
        }
        Ok(match kind {
            Kind::U64 => {
                let v = u64::from_le_bytes(self.array(name)?);
                if name == "num_matrices" {
                    // Bound M by what is left before allocating anything.
                    if v > (self.buf.len() / 8) as u64 {
                        return Err(CoreError::Decode(format!(
                            "truncated: {v} matrices need {} byte(s), {} left",
                            (v as u128) * 8,
                            self.buf.len()
                        )));
                    }
                    self.m = v as usize;
                }
                Value::U64(v)
            }
            Kind::F64 => Value::F64(f64::from_le_bytes(self.array(name)?)),
            Kind::OptF64 => {
                let flag = self.u8(name)?;
                let v = f64::from_le_bytes(self.array(name)?);
                match flag {
                    0 => Value::OptF64(None),
                    1 => Value::OptF64(Some(v)),
                    c => return Err(CoreError::Decode(format!("bad {name} flag {c}"))),
                }
            }
            Kind::Normalization => {
                let code = self.u8(name)?;
                Value::Normalization(Normalization::from_code(code).ok_or_else(|| {
                    CoreError::Decode(format!("unknown normalization code {code}"))
                })?)
            }
            Kind::Schedule => {
                let code = self.u8(name)?;
                Value::Schedule(
                    SCHEDULES.get(code as usize).copied().ok_or_else(|| {
                        CoreError::Decode(format!("unknown schedule code {code}"))
                    })?,
                )
            }
            Kind::F64s => Value::F64s(self.f64s(name)?),
            Kind::OptF64s => match self.u8(name)? {
                0 => Value::OptF64s(None),
                1 => Value::OptF64s(Some(self.f64s(name)?)),
                c => return Err(CoreError::Decode(format!("bad {name} flag {c}"))),
            },
        })
    }
}

pub fn decode(bytes: &[u8]) -> Result<FisherCore, CoreError> {
    let mut r = Reader {
        buf: bytes,
        version: 0,
        m: 0,
    };
    if r.take(4, "magic")? != MAGIC {
        return Err(CoreError::Decode("not an FW-LoRA state (bad magic)".into()));
    }
    let version = u16::from_le_bytes(r.array("version")?);
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(CoreError::Decode(format!(
            "unsupported format version {version} (this build reads {OLDEST_VERSION} to \
             {VERSION})"
        )));
    }
    r.version = version;
    let mut reader_error = None;
    let state = from_fields(|name, kind| {
        r.value(name, kind)
            .inspect_err(|e| reader_error = Some(e.clone()))
    });
    if let Some(e) = reader_error {
        return Err(e);
    }
    let state = state.map_err(|e| CoreError::Decode(e.to_string()))?;
    if !r.buf.is_empty() {
        return Err(CoreError::Decode(format!(
            "{} trailing byte(s) after the state",
            r.buf.len()
        )));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> FisherCore {
        let mut s = FisherCore::new(
            3,
            Config {
                warmup: 2,
                ..Config::default()
            },
        )
        .unwrap();
        s.observe(&[1.0, 2.0, 3.0]).unwrap();
        s.observe(&[f64::NAN, 2.0, 3.0]).unwrap();
        s
    }

    #[test]
    fn round_trip() {
        let s = sample();
        assert_eq!(decode(&encode(&s)).unwrap(), s);
        let fresh = FisherCore::new(5, Config::default()).unwrap();
        assert_eq!(decode(&encode(&fresh)).unwrap(), fresh);
    }

    #[test]
    fn fields_round_trip_and_name_the_schema() {
        let s = sample();
        let fields = to_fields(&s);
        let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
        let schema: Vec<&str> = SCHEMA.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, schema);
        let mut map: std::collections::HashMap<&str, Value> = fields.into_iter().collect();
        let back = from_fields(|name, _kind| Ok(map.remove(name).expect("every field"))).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn fields_of_the_wrong_kind_are_refused() {
        let fields = to_fields(&sample());
        let r = from_fields(|name, _| {
            if name == "step" {
                Ok(Value::F64(1.0))
            } else {
                Ok(fields.iter().find(|(n, _)| *n == name).unwrap().1.clone())
            }
        });
        assert!(r.is_err());
    }

    #[test]
    fn version_2_is_read_as_a_hand_set_lambda() {
        let s = sample();
        let v3 = encode(&s);
        // v2 = v3 with version 2, lam a plain f64 (no flag) and no target_ratio.
        let lam_at = 4 + 2 + 8 + 8 + 8; // magic, version, num_matrices, alpha, warmup
        let mut v2 = v3[..lam_at].to_vec();
        v2[4..6].copy_from_slice(&2u16.to_le_bytes());
        v2.extend_from_slice(&v3[lam_at + 1..lam_at + 9]); // λ without its flag
        v2.extend_from_slice(&v3[lam_at + 9 + 9..]); // target_ratio (flag + f64) dropped
        assert_eq!(decode(&v2).unwrap(), s);
        let mut v1 = v2.clone();
        v1[4..6].copy_from_slice(&1u16.to_le_bytes());
        assert!(matches!(decode(&v1), Err(CoreError::Decode(m)) if m.contains("version 1")));
    }

    #[test]
    fn auto_mode_round_trips_before_and_after_calibration() {
        let config = Config {
            warmup: 1,
            lam: None,
            target_ratio: Some(0.3),
            ..Config::default()
        };
        let mut s = FisherCore::new(2, config).unwrap();
        s.observe(&[1.0, 2.0]).unwrap();
        assert_eq!(decode(&encode(&s)).unwrap(), s);
        s.calibrate(2.0, 3.0).unwrap().unwrap();
        assert_eq!(decode(&encode(&s)).unwrap(), s);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&sample());
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "prefix of {n} bytes decoded");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn huge_length_is_refused_without_allocating() {
        let mut bytes = encode(&sample());
        // M sits after magic(4) version(2), then the schema's first field.
        let at = 4 + 2;
        bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode(&bytes), Err(CoreError::Decode(_))));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn flipped_bytes_never_panic(pos in 0usize..200, val in any::<u8>()) {
            let mut bytes = encode(&sample());
            let i = pos % bytes.len();
            bytes[i] = val;
            if let Ok(s) = decode(&bytes) {
                prop_assert_eq!(decode(&encode(&s)).unwrap(), s);
            }
        }

        #[test]
        fn batched_equals_sequential(
            rows in proptest::collection::vec(proptest::collection::vec(0.0f64..1e6, 4), 1..20)
        ) {
            let config = Config { warmup: 50, ..Config::default() };
            let mut a = FisherCore::new(4, config).unwrap();
            let mut b = a.clone();
            let flat: Vec<f64> = rows.iter().flatten().copied().collect();
            a.observe_batch(&flat, rows.len()).unwrap();
            for row in &rows {
                b.observe(row).unwrap();
            }
            prop_assert_eq!(a, b);
        }
    }
}
