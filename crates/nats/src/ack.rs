//! Revision of a pushed message from its ACK reply subject (N6).

/// What a JetStream ACK reply subject says about a delivered message.
///
/// Subjects look like
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` (9
/// tokens) or carry `<domain>.<account>` after `ACK` (11 tokens, 12 with a
/// trailing random token). Parsed without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AckInfo {
    /// The stream sequence: the message's revision.
    pub stream_sequence: Option<u64>,
    /// The consumer sequence (gaps mean lost deliveries).
    pub consumer_sequence: Option<u64>,
    /// The server time the message was stored, in Unix nanoseconds.
    pub timestamp: Option<u64>,
    /// Messages still pending for the consumer after this one.
    pub pending: Option<u64>,
}

/// Parse an ACK reply subject. Anything that is not one yields all `None`:
/// an unknown revision, never 0.
#[must_use]
pub fn parse_ack_subject(subject: &str) -> AckInfo {
    // Bytes, not chars, and the numbers read from the end: this runs once
    // per delivered message.
    let bytes = subject.as_bytes();
    if !bytes.starts_with(b"$JS.ACK.") {
        return AckInfo::default();
    }
    // Tokens after `<pending>`: none in the 9- and 11-token forms, a random
    // one in the 12-token form.
    let trailing = match bytes.iter().filter(|&&b| b == b'.').count() + 1 {
        9 | 11 => 0,
        12 => 1,
        _ => return AckInfo::default(),
    };
    let mut from_end = bytes.rsplit(|&b| b == b'.').skip(trailing);
    let mut next = || from_end.next().and_then(decimal);
    let (pending, timestamp, consumer_sequence) = (next(), next(), next());
    let stream_sequence = next().filter(|&s| s > 0);
    if stream_sequence.is_none() {
        return AckInfo::default();
    }
    AckInfo {
        stream_sequence,
        consumer_sequence,
        timestamp,
        pending,
    }
}

/// An unsigned decimal of ASCII digits only; `None` when empty, on any
/// other byte, or on overflow.
fn decimal(token: &[u8]) -> Option<u64> {
    if token.is_empty() {
        return None;
    }
    token.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nine_token_subject_gives_the_stream_sequence_at_index_five() {
        let a = parse_ack_subject("$JS.ACK.KV_b.cons.1.42.7.1700000000000000000.3");
        assert_eq!(a.stream_sequence, Some(42));
        assert_eq!(a.consumer_sequence, Some(7));
        assert_eq!(a.timestamp, Some(1_700_000_000_000_000_000));
        assert_eq!(a.pending, Some(3));
    }

    #[test]
    fn domain_form_gives_the_stream_sequence_at_index_seven() {
        let eleven = parse_ack_subject("$JS.ACK.hub.ACC.KV_b.cons.1.42.7.17.0");
        assert_eq!(eleven.stream_sequence, Some(42));
        assert_eq!(eleven.pending, Some(0));
        let twelve = parse_ack_subject("$JS.ACK.hub.ACC.KV_b.cons.1.42.7.17.0.rNd");
        assert_eq!(twelve.stream_sequence, Some(42));
        assert_eq!(twelve.pending, Some(0));
    }

    #[test]
    fn the_last_token_is_pending_not_the_sequence() {
        let a = parse_ack_subject("$JS.ACK.s.c.1.5.5.9.999");
        assert_eq!(a.stream_sequence, Some(5));
        assert_eq!(a.pending, Some(999));
    }

    #[test]
    fn numbers_are_plain_decimals_within_u64() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"+5",
            b"-1",
            b"1x",
            b" 1",
        ] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn garbage_is_unknown_never_zero() {
        for s in [
            "",
            "$JS.ACK",
            "$JS.ACK.s.c.1.x.5.9.0",
            "$JS.ACK.s.c.1.+5.5.9.0",
            "$JS.ACK.s.c.1.0.5.9.0",
            "$JS.NAK.s.c.1.5.5.9.0",
            "$JS.ACK.s.c.1.5.5.9.0.extra",
            "$JS.ACK.a.b.c.d.e.f.g.h.i.j.k.l.m",
            "_INBOX.abc",
        ] {
            assert_eq!(parse_ack_subject(s), AckInfo::default(), "{s}");
        }
    }
}
