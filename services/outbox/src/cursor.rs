//! Cursors: the opaque form of a delivery position (`seq`) that streams hand out and take
//! back, in events and in heartbeats.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The opaque cursor of position `seq`: resuming after it delivers what lies after `seq`.
pub fn cursor(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("ev1:{seq}"))
}

/// The position of `cursor`; `None` when it is not one this suite made.
pub fn parse_cursor(cursor: &str) -> Option<i64> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    text.strip_prefix("ev1:")?
        .parse::<i64>()
        .ok()
        .filter(|seq| *seq >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_roundtrip_and_refuse_garbage() {
        assert_eq!(parse_cursor(&cursor(42)), Some(42));
        assert_eq!(parse_cursor(&cursor(0)), Some(0));
        assert_eq!(parse_cursor("nope"), None);
        assert_eq!(parse_cursor(""), None);
        assert_eq!(parse_cursor(&URL_SAFE_NO_PAD.encode("ev1:-3")), None);
        assert_eq!(parse_cursor(&URL_SAFE_NO_PAD.encode("ev2:3")), None);
    }
}
