//! Helpers shared by the fuzz targets: reading parameters and split points from the input.
#![allow(dead_code)]

/// Reads parameters off the front of the fuzz input; missing bytes read as 0.
pub struct Input<'a> {
    pub rest: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { rest: data }
    }

    pub fn byte(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, tail)) => {
                self.rest = tail;
                b
            }
            None => 0,
        }
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.rest.len());
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        head
    }

    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        for (i, x) in self.bytes(4).iter().enumerate() {
            b[i] = *x;
        }
        u32::from_le_bytes(b)
    }

    pub fn i64(&mut self) -> i64 {
        let mut b = [0u8; 8];
        for (i, x) in self.bytes(8).iter().enumerate() {
            b[i] = *x;
        }
        i64::from_le_bytes(b)
    }

    /// A length-prefixed field: one length byte, then that many bytes.
    pub fn field(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte());
        self.bytes(n)
    }
}

/// Splits `body` into chunks whose lengths come from `control` (used cyclically): a control byte
/// `b` gives `b % 16` bytes (0 = an empty chunk, as Envoy sometimes delivers), or, for `b >= 240`,
/// `(b - 239) * 64` bytes. No control bytes: one chunk.
pub fn chunks<'a>(control: &[u8], body: &'a [u8]) -> Vec<&'a [u8]> {
    if control.is_empty() {
        return vec![body];
    }
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut i = 0usize;
    // Bounded: at most this many chunks (empty ones included), then the rest in one piece.
    while pos < body.len() && out.len() < 4096 {
        let b = control[i % control.len()];
        i += 1;
        let len = if b >= 240 {
            usize::from(b - 239) * 64
        } else {
            usize::from(b % 16)
        };
        let end = (pos + len).min(body.len());
        out.push(&body[pos..end]);
        pos = end;
    }
    if pos < body.len() {
        out.push(&body[pos..]);
    }
    out
}

/// A reference glob matcher (`*` = any run of characters, everything else literal), by dynamic
/// programming over chars: the oracle for `model_access::wildcard_match`.
pub fn glob_reference(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // dp[j] = pattern prefix (up to the current i) matches text prefix of length j.
    let mut dp = vec![false; t.len() + 1];
    dp[0] = true;
    for &pc in &p {
        let mut next = vec![false; t.len() + 1];
        if pc == '*' {
            let mut any = false;
            for j in 0..=t.len() {
                any |= dp[j];
                next[j] = any;
            }
        } else {
            for j in 1..=t.len() {
                next[j] = dp[j - 1] && t[j - 1] == pc;
            }
        }
        dp = next;
    }
    dp[t.len()]
}
