//! A versioned little-endian byte format for [`FisherState`].
//!
//! Layout (version 1): magic `FWLS`, u16 version, f64 alpha, u64 warmup, f64 lam,
//! u8 normalization, u8 schedule, u64 ramp_steps, u64 refresh_every, u64 M, u64 step,
//! u64 skipped, u8 has_importance, M × f64 fisher, [M × f64 importance].
//! Decoding checks every length before reading and validates the result through
//! [`FisherState::from_parts`], so corrupt or truncated input is an error, never a panic.

use super::config::{Config, Normalization, Schedule};
use super::error::CoreError;
use super::state::{FisherState, StateParts};

const MAGIC: &[u8; 4] = b"FWLS";
const VERSION: u16 = 1;

pub fn encode(state: &FisherState) -> Vec<u8> {
    let c = state.config();
    let m = state.num_matrices();
    let imp = state.importance();
    let mut out = Vec::with_capacity(72 + 16 * m);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&c.alpha.to_le_bytes());
    out.extend_from_slice(&c.warmup.to_le_bytes());
    out.extend_from_slice(&c.lam.to_le_bytes());
    out.push(c.normalization.code());
    out.push(match c.schedule {
        Schedule::Constant => 0,
        Schedule::Ramp { .. } => 1,
    });
    out.extend_from_slice(&c.schedule.ramp_steps().to_le_bytes());
    out.extend_from_slice(&c.refresh_every.to_le_bytes());
    out.extend_from_slice(&(m as u64).to_le_bytes());
    out.extend_from_slice(&state.step().to_le_bytes());
    out.extend_from_slice(&state.skipped().to_le_bytes());
    out.push(imp.is_some() as u8);
    for f in state.fisher() {
        out.extend_from_slice(&f.to_le_bytes());
    }
    for i in imp.unwrap_or(&[]) {
        out.extend_from_slice(&i.to_le_bytes());
    }
    out
}

struct Reader<'a> {
    buf: &'a [u8],
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
    fn u64(&mut self, what: &str) -> Result<u64, CoreError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn f64(&mut self, what: &str) -> Result<f64, CoreError> {
        Ok(f64::from_le_bytes(self.array(what)?))
    }
    fn f64s(&mut self, n: usize, what: &str) -> Result<Vec<f64>, CoreError> {
        let bytes = n
            .checked_mul(8)
            .ok_or_else(|| CoreError::Decode(format!("{what}: length {n} overflows")))?;
        Ok(self
            .take(bytes, what)?
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")))
            .collect())
    }
}

pub fn decode(bytes: &[u8]) -> Result<FisherState, CoreError> {
    let mut r = Reader { buf: bytes };
    if r.take(4, "magic")? != MAGIC {
        return Err(CoreError::Decode("not an FW-LoRA state (bad magic)".into()));
    }
    let version = u16::from_le_bytes(r.array("version")?);
    if version != VERSION {
        return Err(CoreError::Decode(format!(
            "unsupported format version {version} (this build reads {VERSION})"
        )));
    }
    let alpha = r.f64("alpha")?;
    let warmup = r.u64("warmup")?;
    let lam = r.f64("lam")?;
    let norm_code = r.u8("normalization")?;
    let normalization = Normalization::from_code(norm_code)
        .ok_or_else(|| CoreError::Decode(format!("unknown normalization code {norm_code}")))?;
    let sched_code = r.u8("schedule")?;
    let ramp_steps = r.u64("ramp_steps")?;
    let schedule = match sched_code {
        0 => Schedule::Constant,
        1 => Schedule::Ramp { steps: ramp_steps },
        c => return Err(CoreError::Decode(format!("unknown schedule code {c}"))),
    };
    let refresh_every = r.u64("refresh_every")?;
    let m = r.u64("num_matrices")?;
    let step = r.u64("step")?;
    let skipped = r.u64("skipped")?;
    let has_importance = match r.u8("has_importance")? {
        0 => false,
        1 => true,
        c => return Err(CoreError::Decode(format!("bad has_importance flag {c}"))),
    };
    // Bound M by what is left before allocating anything.
    let per = if has_importance { 16 } else { 8 };
    if m > (r.buf.len() / per) as u64 {
        return Err(CoreError::Decode(format!(
            "truncated: {m} matrices need {} byte(s), {} left",
            (m as u128) * per as u128,
            r.buf.len()
        )));
    }
    let m = m as usize;
    let fisher = r.f64s(m, "fisher")?;
    let importance = if has_importance {
        Some(r.f64s(m, "importance")?)
    } else {
        None
    };
    if !r.buf.is_empty() {
        return Err(CoreError::Decode(format!(
            "{} trailing byte(s) after the state",
            r.buf.len()
        )));
    }
    let config = Config {
        alpha,
        warmup,
        lam,
        normalization,
        schedule,
        refresh_every,
    };
    FisherState::from_parts(StateParts {
        config,
        fisher,
        step,
        skipped,
        importance,
    })
    .map_err(|e| CoreError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> FisherState {
        let mut s = FisherState::new(
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
        let fresh = FisherState::new(5, Config::default()).unwrap();
        assert_eq!(decode(&encode(&fresh)).unwrap(), fresh);
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
        // M sits after magic(4) version(2) alpha(8) warmup(8) lam(8) codes(2) ramp(8) refresh(8).
        let at = 4 + 2 + 8 + 8 + 8 + 2 + 8 + 8;
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
            let mut a = FisherState::new(4, config).unwrap();
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
