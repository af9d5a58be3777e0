//! The admin API: the report and request types that the server and its clients share
//! (`report`, `request`), the HTTP server (`server`), the Prometheus rendering (`metrics`) and
//! the client that `lb ctl` and `lb stats` use (`client`).

pub mod client;
pub mod metrics;
pub mod report;
pub mod request;
pub mod server;
