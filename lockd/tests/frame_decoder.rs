//! The frame decoder never panics: any byte sequence yields a frame, "need
//! more bytes", or an error; every valid frame round-trips through encode and
//! decode, and every strict prefix of it is "need more bytes".

use lockd::wire::{
    decode, Body, Command, ErrorCode, Frame, Greeting, LockMsg, LockRange, Mode, Stats,
    HEADER_BYTES, PAYLOAD_MAX_BYTES,
};
use proptest::prelude::*;

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::Null),
        Just(Mode::Read),
        Just(Mode::WriteOnly),
        Just(Mode::Write)
    ]
}

fn lock_msg() -> impl Strategy<Value = LockMsg> {
    (any::<u64>(), any::<u64>(), any::<u64>(), mode()).prop_map(|(zone, a, b, mode)| LockMsg {
        range: LockRange::new(zone, a.min(b), a.max(b)),
        mode,
    })
}

fn frame() -> impl Strategy<Value = Frame> {
    let header = (any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>());
    let body = prop_oneof![
        lock_msg().prop_map(|m| (Command::Lock, Body::Lock(m))),
        lock_msg().prop_map(|m| (Command::Invalidate, Body::Lock(m))),
        lock_msg().prop_map(|m| (Command::Recover, Body::Lock(m))),
        Just((Command::Heartbeat, Body::Empty)),
        Just((Command::Farewell, Body::Empty)),
        (
            any::<u32>(),
            0u32..2,
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(version, resumed, cluster_id, client_id, server_epoch, recv_seq)| {
                    (
                        Command::Greeting,
                        Body::Greeting(Greeting {
                            magic: lockd::wire::GREETING_MAGIC,
                            version,
                            resumed,
                            cluster_id,
                            client_id,
                            server_epoch,
                            recv_seq,
                        }),
                    )
                }
            ),
    ];
    (header, body).prop_map(
        |((seq, ack, request_id, response), (command, body))| Frame {
            seq,
            ack,
            request_id,
            command,
            response,
            error: ErrorCode::Ok,
            body,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut rest = &bytes[..];
        // Decode frame after frame, as the reader does, until an error or a wait.
        while let Ok(Some((_, used))) = decode(rest) {
            prop_assert!(used >= HEADER_BYTES && used <= rest.len());
            rest = &rest[used..];
        }
    }

    #[test]
    fn mutated_valid_frames_never_panic(frame in frame(), flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..6)) {
        let mut bytes = Vec::new();
        frame.encode_into(frame.ack, &mut bytes);
        for (at, value) in flips {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        if let Ok(Some((decoded, used))) = decode(&bytes) {
            prop_assert_eq!(used, bytes.len());
            let mut again = Vec::new();
            decoded.encode_into(decoded.ack, &mut again);
            prop_assert_eq!(again, bytes);
        }
    }

    #[test]
    fn valid_frames_round_trip_and_prefixes_wait(frame in frame()) {
        let mut bytes = Vec::new();
        frame.encode_into(frame.ack, &mut bytes);
        prop_assert_eq!(decode(&bytes), Ok(Some((frame, bytes.len()))));
        for cut in 0..bytes.len() {
            prop_assert_eq!(decode(&bytes[..cut]), Ok(None));
        }
    }
}

fn header(command: u8, flags: u8, error: u16, len: u32) -> Vec<u8> {
    let mut bytes = vec![0u8; 24];
    bytes.push(command);
    bytes.push(flags);
    bytes.extend_from_slice(&error.to_le_bytes());
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes
}

#[test]
fn each_kind_of_bad_header_is_refused_before_its_payload() {
    use lockd::wire::DecodeError;
    assert_eq!(
        decode(&header(99, 0, 0, 0)),
        Err(DecodeError::UnknownCommand(99))
    );
    assert_eq!(
        decode(&header(3, 0x80, 0, 32)),
        Err(DecodeError::UnknownFlags(0x80))
    );
    assert_eq!(
        decode(&header(3, 1, 999, 32)),
        Err(DecodeError::UnknownError(999))
    );
    assert_eq!(
        decode(&header(3, 0, 0, PAYLOAD_MAX_BYTES + 1)),
        Err(DecodeError::Oversized(PAYLOAD_MAX_BYTES + 1))
    );
    assert!(matches!(
        decode(&header(3, 0, 0, 8)),
        Err(DecodeError::BadLength {
            command: Command::Lock,
            len: 8,
            expected: 32
        })
    ));
    // A stat response carries the counters; its request carries nothing.
    assert_eq!(
        decode(&header(7, 0, 0, 0)).map(|f| f.map(|(f, _)| f.body)),
        Ok(Some(Body::Empty))
    );
    let mut stat = header(7, 1, 0, 80);
    Stats {
        locks: 7,
        ..Stats::default()
    }
    .encode(&mut stat);
    assert_eq!(
        decode(&stat).map(|f| f.map(|(f, _)| f.body)),
        Ok(Some(Body::Stats(Stats {
            locks: 7,
            ..Stats::default()
        })))
    );
    let mut bad_mode = header(3, 0, 0, 32);
    bad_mode.extend_from_slice(&[0u8; 24]);
    bad_mode.push(9);
    bad_mode.extend_from_slice(&[0u8; 7]);
    assert_eq!(decode(&bad_mode), Err(DecodeError::BadMode(9)));
}
