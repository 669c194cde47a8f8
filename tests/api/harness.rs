//! The test harness itself: a mock handler that panics fails its test (issue 12).
use serde_json::json;

use crate::helpers::{spawn_app, Reply};

#[tokio::test]
#[should_panic(expected = "the mock upstream's handler panicked")]
async fn a_panic_in_a_mock_handler_fails_the_test() {
    let app = spawn_app().await;
    app.upstream.push(Reply::Panic);

    // The mock answers 500 and llmux retries it: the answer itself looks fine.
    let response = app
        .post_json("/v1/chat/completions", json!({"model": "m"}))
        .await;
    assert_eq!(response.status(), 200);

    // Dropping the app drops its mock, which re-raises the handler's panic.
}
