//! The net layer: per-peer session bookkeeping (sans-IO) and the tokio tasks
//! that read and write frames on a socket.

mod addr;
mod conn;
mod seqmap;
mod session;

pub use addr::{Endpoint, Listener, Stream, DEFAULT_PORT};
pub use conn::{spawn_conn, ConnEvent, Outbox, FRAMES_PER_BATCH_MAX, READ_BUFFER_BYTES};
pub use session::{Received, Session, SessionError, REQUESTS_IN_FLIGHT_MAX, RESPONSES_UNACKED_MAX};
