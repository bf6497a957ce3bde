//! The Redis protocol: requests in (RESP2 multibulk and inline), replies out
//! (RESP2, or RESP3 after `HELLO 3`).

mod reply;
mod request;

pub use reply::{Protocol, Reply, format_double};
pub use request::{Limits, RequestParser};
