//! Workload identity: SPIFFE IDs today; keys, CSRs, CA signing and the rustls configs for mTLS
//! arrive with the identity work (DESIGN §3).

mod spiffe;

pub use spiffe::{SpiffeId, SpiffeIdError};
