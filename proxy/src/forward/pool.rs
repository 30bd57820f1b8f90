//! New upstream connections for a backend (the idle pools themselves are
//! [`switchyard_http1::pool`]'s, one per backend).

use std::time::Duration;

use switchyard_shared::validate::Scheme;

use switchyard_http1::Conn;
pub use switchyard_http1::pool::{ConnectError, Pool};

use super::tls;
use crate::backend::Backend;

/// Opens a new connection to `backend` (TCP, and TLS for https), bounded by
/// `timeout` as a whole.
pub async fn connect(backend: &Backend, timeout: Duration) -> Result<Box<Conn>, ConnectError> {
    let target = &backend.target;
    let tls = match target.scheme {
        Scheme::Http => None,
        Scheme::Https => {
            Some(tls::connector_for(&backend.key, &target.host, false).map_err(ConnectError::Tls)?)
        }
    };
    switchyard_http1::pool::connect(&target.host, target.port, tls, timeout).await
}
