//! The Redis protocol: requests in (RESP2 multibulk and inline), replies out
//! (RESP2, or RESP3 after `HELLO 3`).

mod redis_reply;
mod reply;
mod request;

pub use redis_reply::{ReplyScanner, decode_reply};
pub use reply::{Protocol, Reply, format_double};
pub use request::{Limits, RequestParser};
