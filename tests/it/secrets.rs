//! Secrets stay secret: handed-out passwords and API tokens never reach the logs (at any level,
//! the PostgreSQL driver's included) and are never stored in clear.

use crate::support::*;
use serde_json::json;

#[tokio::test]
async fn passwords_and_tokens_never_reach_logs_or_the_store_in_clear() {
    let logs = logs::capture();

    let app = TestApp::spawn().await;
    let env = app.create(json!({ "key": "secrets/1" })).await;
    let first = env["connection"]["password"].as_str().unwrap().to_owned();
    let (_, rotated) = app
        .post(&format!("{}/credentials", env_path("secrets/1")), json!({}))
        .await;
    let second = rotated["connection"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    app.get(&format!("{}?reveal=true", env_path("secrets/1")))
        .await;

    let text = logs.text();
    assert!(
        text.contains("request"),
        "the capture works: {} bytes",
        text.len()
    );
    assert!(
        text.contains("ALTER ROLE") || text.contains("CREATE ROLE"),
        "driver statements are captured too"
    );
    for secret in [first.as_str(), second.as_str(), ADMIN_TOKEN] {
        assert!(!text.contains(secret), "a secret reached the logs");
    }

    let control = app.admin("previewdb").await;
    let row = control
        .query_one(
            "SELECT row_to_json(e)::text FROM environments e WHERE key = 'secrets/1'",
            &[],
        )
        .await
        .unwrap();
    let stored: String = row.get(0);
    assert!(
        !stored.contains(&second) && !stored.contains(&first),
        "no password in clear in the store"
    );
    assert!(stored.contains("password_sealed"));
}
