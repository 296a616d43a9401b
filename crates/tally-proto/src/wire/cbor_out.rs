//! A tiny CBOR writer for the handful of shapes the wire messages use.
//!
//! Writing our own keeps encoding infallible (no `Result` from a `Vec` writer to unwrap) and
//! lets numbers follow the JS client's rules exactly: every length is definite (cbor-x's
//! decoder rejects indefinite-length strings), and a whole number above `u32::MAX` is written
//! as a float64, as cbor-x writes `Date.now()`, because cbor-x decodes a CBOR uint64 into a
//! JS `BigInt`, which breaks arithmetic on the JS side.

/// Largest whole number a JS `number` holds exactly (2^53).
const JS_MAX_SAFE: u64 = 1 << 53;

/// Appends CBOR items to a byte buffer.
#[derive(Default)]
pub(crate) struct CborOut {
    buf: Vec<u8>,
}

impl CborOut {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }

    fn head(&mut self, major: u8, n: u64) {
        let m = major << 5;
        if n < 24 {
            self.buf.push(m | n as u8);
        } else if let Ok(n) = u8::try_from(n) {
            self.buf.extend_from_slice(&[m | 24, n]);
        } else if let Ok(n) = u16::try_from(n) {
            self.buf.push(m | 25);
            self.buf.extend_from_slice(&n.to_be_bytes());
        } else if let Ok(n) = u32::try_from(n) {
            self.buf.push(m | 26);
            self.buf.extend_from_slice(&n.to_be_bytes());
        } else {
            self.buf.push(m | 27);
            self.buf.extend_from_slice(&n.to_be_bytes());
        }
    }

    /// A whole number, written the way cbor-x writes a JS number.
    pub(crate) fn number(&mut self, n: u64) -> &mut Self {
        if n > u64::from(u32::MAX) && n <= JS_MAX_SAFE {
            self.buf.push(0xfb);
            // n <= 2^53, so the conversion is exact.
            self.buf.extend_from_slice(&(n as f64).to_be_bytes());
        } else {
            self.head(0, n);
        }
        self
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.head(2, b.len() as u64);
        self.buf.extend_from_slice(b);
        self
    }

    pub(crate) fn text(&mut self, s: &str) -> &mut Self {
        self.head(3, s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
        self
    }

    pub(crate) fn array(&mut self, len: usize) -> &mut Self {
        self.head(4, len as u64);
        self
    }

    pub(crate) fn map(&mut self, len: usize) -> &mut Self {
        self.head(5, len as u64);
        self
    }

    pub(crate) fn bool(&mut self, b: bool) -> &mut Self {
        self.buf.push(if b { 0xf5 } else { 0xf4 });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciborium::Value;

    fn read(bytes: &[u8]) -> Value {
        ciborium::from_reader(bytes).unwrap()
    }

    #[test]
    fn heads_and_numbers_read_back() {
        for n in [0u64, 23, 24, 255, 256, 65_535, 65_536, u32::MAX as u64] {
            let mut out = CborOut::new();
            out.number(n);
            assert_eq!(read(&out.finish()), Value::Integer(n.into()));
        }
        let ts = 1_700_000_000_000u64;
        let mut out = CborOut::new();
        out.number(ts);
        let bytes = out.finish();
        assert_eq!(bytes[0], 0xfb, "timestamps go out as float64 like cbor-x");
        assert_eq!(read(&bytes), Value::Float(ts as f64));
        let mut out = CborOut::new();
        out.number(u64::MAX);
        assert_eq!(read(&out.finish()), Value::Integer(u64::MAX.into()));
    }

    #[test]
    fn containers_read_back() {
        let long = "x".repeat(70_000);
        let mut out = CborOut::new();
        out.map(3);
        out.text("a").bytes(&[1, 2, 3]);
        out.text("b").array(2).bool(true).bool(false);
        out.text("c").text(&long);
        let v = read(&out.finish());
        assert_eq!(
            v,
            Value::Map(vec![
                (Value::Text("a".into()), Value::Bytes(vec![1, 2, 3])),
                (
                    Value::Text("b".into()),
                    Value::Array(vec![Value::Bool(true), Value::Bool(false)])
                ),
                (Value::Text("c".into()), Value::Text(long)),
            ])
        );
    }
}
