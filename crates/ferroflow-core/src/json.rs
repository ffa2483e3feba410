//! JSON decoding on a SIMD parser (sonic-rs): what [`Stream::decode_json`](crate::Stream::decode_json)
//! and [`JsonLinesSource::open`](crate::source::JsonLinesSource::open) run, and [`parse`] for a
//! decode step that borrows strings from the source bytes. See docs/adr/0013 for the measurements.

use crate::dead_letter::Rejection;

/// Parses `bytes` as one JSON value into `T`, which may borrow strings from `bytes`; anything that
/// is not exactly one valid JSON value of `T`'s shape (invalid UTF-8, trailing bytes included) is
/// a `decode_error` rejection with the parser's reason.
///
/// # Examples
/// ```
/// use ferroflow_core::json;
///
/// #[derive(serde::Deserialize)]
/// struct Click<'a> {
///     user: &'a str,
///     ts: i64,
/// }
///
/// let c: Click<'_> = json::parse(br#"{"user":"u1","ts":5}"#).unwrap();
/// assert_eq!((c.user, c.ts), ("u1", 5));
/// assert!(json::parse::<Click<'_>>(br#"{"user":"u1"}"#).is_err());
/// ```
pub fn parse<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Rejection> {
    sonic_rs::from_slice(bytes).map_err(|e| Rejection::decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::parse;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Ev<'a> {
        #[serde(borrow)]
        user: std::borrow::Cow<'a, str>,
        n: i64,
    }

    /// What serde_json decides is what the step decides: the two parsers must agree on which
    /// inputs are JSON of the shape, and on the values.
    #[test]
    fn accepts_and_refuses_what_serde_json_does() {
        let cases: &[&[u8]] = &[
            br#"{"user":"a","n":1}"#,
            br#"  {"n":-7,"user":"\u00e9\n"}  "#,
            br#"{"user":"a","n":1,"extra":[1,{"x":null}]}"#,
            br#"{"user":"a","n":1} x"#,
            br#"{"user":"a","n":1.5}"#,
            br#"{"user":"a","n":99999999999999999999}"#,
            br#"{"user":"a"}"#,
            br#"{"user":"a","n":1"#,
            b"{\"user\":\"\xff\",\"n\":1}",
            br#"{"user":"\ud800","n":1}"#,
            br#"{"user":'a',"n":1}"#,
            br#"[]"#,
            b"",
        ];
        for case in cases {
            let ours = parse::<Ev<'_>>(case).ok();
            let theirs = serde_json::from_slice::<Ev<'_>>(case).ok();
            assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(case));
        }
    }

    /// Pieces of JSON, valid and broken, glued at random.
    fn jsonish() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            Just(&b"{"[..]),
            Just(&b"}"[..]),
            Just(&br#"{"user":"u","n":"#[..]),
            Just(&b"\"user\":"[..]),
            Just(&b"\"n\":"[..]),
            Just(&b","[..]),
            Just(&b"\"x\\u00e9\\\"\""[..]),
            Just(&b"\"\\ud83d\\ude00\""[..]),
            Just(&b"-0"[..]),
            Just(&b"12e3"[..]),
            Just(&b"9223372036854775808"[..]),
            Just(&b"null"[..]),
            Just(&b" "[..]),
            Just(&b"["[..]),
            Just(&b"]"[..]),
            Just(&b"\xc3\xa9"[..]),
            Just(&b"\xff"[..]),
        ];
        proptest::collection::vec(piece, 0..16).prop_map(|ps| ps.concat())
    }

    proptest::proptest! {
        #[test]
        fn random_pieces_decide_as_serde_json_does(bytes in jsonish()) {
            let ours = parse::<Ev<'_>>(&bytes).ok();
            let theirs = serde_json::from_slice::<Ev<'_>>(&bytes).ok();
            proptest::prop_assert_eq!(ours, theirs);
            let ours = parse::<serde_json::Value>(&bytes).ok();
            let theirs = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
            proptest::prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let bytes = br#"{"user":"plain","n":1}"#;
        let e: Ev<'_> = parse(bytes).unwrap();
        assert!(matches!(e.user, std::borrow::Cow::Borrowed("plain")));
        let any: BTreeMap<String, serde_json::Value> = parse(br#"{"a":[1,2]}"#).unwrap();
        assert_eq!(any["a"], serde_json::json!([1, 2]));
    }
}
