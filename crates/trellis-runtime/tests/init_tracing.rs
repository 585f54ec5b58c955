//! Installs the global logger, so it runs in its own test process.

use trellis_runtime::{TracingError, TracingOptions, init_tracing};

#[test]
fn init_twice_is_an_error_not_a_panic() {
    let handle = init_tracing(TracingOptions::default()).expect("first init succeeds");
    let again = init_tracing(TracingOptions::default());
    assert!(matches!(again, Err(TracingError::AlreadyInitialized)));
    let message = again.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("only once"), "{message}");

    // The installed logger can be adjusted at run time.
    handle.set_level("debug,trellis_proxy=trace").unwrap();
    assert_eq!(handle.level(), "debug,trellis_proxy=trace");
    assert!(handle.set_level("loud").is_err());
    assert_eq!(handle.level(), "debug,trellis_proxy=trace");
}
