//! The coding of the counter entries every admission and settlement reads and compare-and-sets
//! in shared data (budget counters, rate-limit windows, fleet mode's rate slices): fixed-width
//! binary, each field a little-endian `i64`, in the order of its struct's field list
//! ([`Fields`], written once per struct by [`i64_fields!`]). Trailing zero fields are left out
//! (a budget entry outside fleet mode stays 3 fields long) and a field missing from an entry
//! reads 0, so a field appended to a list later reads 0 from an entry written before it; fields
//! an entry has beyond the list are ignored. The encoding is canonical (one byte string per
//! value), so comparing bytes compares values. Text (`format!` and `parse` of every field) cost
//! about 6× as much per update natively (`examples/request_profile`).
//!
//! Entries written as text by older modules are under other key prefixes
//! ([`crate::contract`]), so they are never read as binary (nor these as text by an older
//! module still draining in the same Envoy).

/// A value stored as `N` `i64` fields.
pub trait Fields<const N: usize>: Sized {
    fn to_fields(&self) -> [i64; N];
    fn from_fields(fields: [i64; N]) -> Self;

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(N * 8);
        put(&mut out, &self.to_fields());
        out
    }

    fn decode(bytes: &[u8]) -> Self {
        Self::from_fields(read(bytes))
    }
}

/// Appends `fields` without their trailing zeros; returns how many were written.
pub fn put(out: &mut Vec<u8>, fields: &[i64]) -> usize {
    let n = fields
        .iter()
        .rposition(|f| *f != 0)
        .map_or(0, |last| last + 1);
    for f in &fields[..n] {
        out.extend_from_slice(&f.to_le_bytes());
    }
    n
}

/// The first `N` fields of `bytes`; missing ones (and a partial last one) read 0.
pub fn read<const N: usize>(bytes: &[u8]) -> [i64; N] {
    let mut chunks = bytes.chunks_exact(8);
    std::array::from_fn(|_| {
        chunks
            .next()
            .and_then(|c| <[u8; 8]>::try_from(c).ok())
            .map_or(0, i64::from_le_bytes)
    })
}

/// How many identifiers it is given.
macro_rules! count_fields {
    () => { 0usize };
    ($first:ident $($rest:ident)*) => { 1usize + $crate::entry::count_fields!($($rest)*) };
}
pub(crate) use count_fields;

/// [`Fields`] for a struct of `i64` fields, from the one list of its fields in entry order
/// (append new ones). The struct is built whole from the list, so a field missing from it does
/// not compile.
macro_rules! i64_fields {
    ($ty:ty { $($field:ident),+ $(,)? }) => {
        impl $crate::entry::Fields<{ $crate::entry::count_fields!($($field)+) }> for $ty {
            fn to_fields(&self) -> [i64; $crate::entry::count_fields!($($field)+)] {
                [$(self.$field),+]
            }

            fn from_fields(fields: [i64; $crate::entry::count_fields!($($field)+)]) -> Self {
                let [$($field),+] = fields;
                Self { $($field),+ }
            }
        }
    };
}
pub(crate) use i64_fields;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Eq)]
    struct Three {
        a: i64,
        b: i64,
        c: i64,
    }
    i64_fields!(Three { a, b, c });

    #[derive(Debug, Default, PartialEq, Eq)]
    struct Two {
        a: i64,
        b: i64,
    }
    i64_fields!(Two { a, b });

    #[test]
    fn fields_round_trip_little_endian_without_trailing_zeros() {
        let v = Three {
            a: -1,
            b: i64::MAX,
            c: i64::MIN,
        };
        assert_eq!(Three::decode(&v.encode()), v);
        let short = Three { a: 1, b: 0, c: 0 };
        assert_eq!(short.encode(), 1i64.to_le_bytes());
        assert_eq!(Three::decode(&short.encode()), short);
        assert!(Three::default().encode().is_empty());
        let inner_zero = Three { a: 0, b: 2, c: 0 };
        assert_eq!(inner_zero.encode().len(), 16);
        assert_eq!(Three::decode(&inner_zero.encode()), inner_zero);
    }

    /// An entry written with fewer fields reads them and 0 for the rest; one with more reads
    /// the fields it knows; a partial field reads 0.
    #[test]
    fn shorter_longer_and_partial_entries() {
        let two = Two { a: 5, b: 6 };
        assert_eq!(Three::decode(&two.encode()), Three { a: 5, b: 6, c: 0 });
        let three = Three { a: 5, b: 6, c: 7 };
        assert_eq!(Two::decode(&three.encode()), two);
        let mut partial = two.encode();
        partial.extend_from_slice(&[1, 2, 3]);
        assert_eq!(Three::decode(&partial), Three { a: 5, b: 6, c: 0 });
        assert_eq!(Three::decode(b"1 2 3"), Three::default());
    }
}
