//! The hash map of the request path's lookups: services by host and address, routes by path,
//! pooled connections by address.
//!
//! std's default hasher (SipHash-1-3) costs ~100 instructions per short key; foldhash costs a
//! few. Its seed is still random per process, and every one of these maps is built from config or
//! keyed by addresses this proxy chose to connect to: a peer's bytes are only ever looked up, never
//! inserted, so there is no flooding to defend against. Measured with `bench/instructions`: 1.5 to
//! 2 % fewer instructions per HTTP/1.1 request on each proxy of the pair.

/// A `HashMap` with foldhash's per-process random seed.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
