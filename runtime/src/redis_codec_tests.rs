//! Property tests of the vendored redis crate's fast reply parser
//! (vendor/redis/PATCHES.md): `ValueCodec` must decode every byte stream
//! as upstream's combine-only codec does — the same values and the same
//! bytes consumed, and an error where combine has one — whether the replies
//! arrive whole or split anywhere, well-formed, RESP3, or garbage. (After an
//! error the connection is dropped; only the byte offset in the message may
//! differ, as combine may have consumed part of the reply earlier.)

use bytes::BytesMut;
use proptest::prelude::*;
use redis::ValueCodec;
use tokio_util::codec::Decoder;

/// One encoded reply: the RESP2 types the fast path parses, RESP3 types it
/// hands to combine, nested in arrays.
fn reply() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
        Just(b": 42 \r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| {
            let mut v = format!("${}\r\n", b.len()).into_bytes();
            v.extend_from_slice(&b);
            v.extend_from_slice(b"\r\n");
            v
        }),
        Just(b"$4\r\na\r\nb\r\n".to_vec()),
        Just(b"$-1\r\n".to_vec()),
        Just(b"*-1\r\n".to_vec()),
        Just(b"_\r\n".to_vec()),
        Just(b"+OK\r\n".to_vec()),
        "[a-zA-Z0-9 \r]{0,20}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
        Just(b"-NOSCRIPT No matching script\r\n".to_vec()),
        Just(b"-ERR Error running script\r\n".to_vec()),
        Just(b"-CUSTOM code\r\n".to_vec()),
        Just(b"-\r\n".to_vec()),
        Just(b",1.5\r\n".to_vec()),
        Just(b"#t\r\n".to_vec()),
        Just(b"%1\r\n+k\r\n:1\r\n".to_vec()),
        Just(b"(12345678901234567890\r\n".to_vec()),
        Just(b"=8\r\ntxt:abcd\r\n".to_vec()),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        proptest::collection::vec(inner, 0..8).prop_map(|items| {
            let mut v = format!("*{}\r\n", items.len()).into_bytes();
            for item in items {
                v.extend_from_slice(&item);
            }
            v
        })
    })
}

/// A stream: a few replies, then maybe damaged (a byte changed, or cut).
fn stream() -> impl Strategy<Value = Vec<u8>> {
    (proptest::collection::vec(reply(), 1..4), any::<u16>(), any::<u8>(), 0u8..4).prop_map(
        |(replies, at, byte, damage)| {
            let mut bytes: Vec<u8> = replies.concat();
            let at = at as usize % bytes.len();
            match damage {
                0 => bytes[at] = byte,
                1 => bytes.truncate(at),
                _ => {}
            }
            bytes
        },
    )
}

/// Feed `bytes` in pieces cut at `cuts`, decoding after each; then once at
/// EOF. Returns every decode result and what was left unconsumed.
fn decode_all(mut codec: ValueCodec, bytes: &[u8], cuts: &[usize]) -> (Vec<String>, usize) {
    let mut buf = BytesMut::new();
    let mut results = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(bytes.len());
    points.sort();
    let mut fed = 0;
    for p in points {
        buf.extend_from_slice(&bytes[fed..p]);
        fed = p;
        loop {
            let r = codec.decode(&mut buf);
            let more = matches!(r, Ok(Some(_)));
            if let Err(e) = &r {
                results.push(error_text(e));
                return (results, 0);
            }
            results.push(format!("{r:?}"));
            if !more {
                break;
            }
        }
    }
    match codec.decode_eof(&mut buf) {
        Err(e) => {
            results.push(error_text(&e));
            (results, 0)
        }
        r => {
            results.push(format!("{r:?}"));
            (results, buf.len())
        }
    }
}

/// An error without the byte offset combine reports it at.
fn error_text(e: &redis::RedisError) -> String {
    let text = format!("Err({e:?})");
    match text.find(" at ") {
        Some(i) => {
            let rest = &text[i + 4..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            format!("{} at _{}", &text[..i], &rest[digits..])
        }
        None => text,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn fast_codec_decodes_like_combine(bytes in stream(), cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let fast = decode_all(ValueCodec::default(), &bytes, &cuts);
        let combine = decode_all(ValueCodec::combine_only(), &bytes, &cuts);
        prop_assert_eq!(fast, combine);
    }
}

/// The fast path is taken for what a BullMQ worker reads most (a job
/// hash in an array) and returns what combine returns; this one also fails
/// if the comparison above were vacuous (both sides the same code).
#[test]
fn a_move_to_active_reply_decodes_in_one_call() {
    let reply = b"*4\r\n*4\r\n$4\r\nname\r\n$4\r\necho\r\n$4\r\ndata\r\n$7\r\n{\"i\":1}\r\n$1\r\n7\r\n:0\r\n:0\r\n";
    let mut buf = BytesMut::from(&reply[..]);
    let value = ValueCodec::default().decode(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty());
    assert_eq!(value, redis::parse_redis_value(reply).unwrap());
    let mut half = BytesMut::from(&reply[..20]);
    assert_eq!(ValueCodec::default().decode(&mut half).unwrap(), None);
    assert_eq!(half.len(), 20, "an incomplete reply is left in the buffer for the next read");
}
