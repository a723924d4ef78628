//! The OpenAPI document the server serves is the copy saved in `tests/fixtures/openapi.json`,
//! up to the order of object keys and of lists of names (the order utoipa happens to give):
//! moving the server's code (issue #27) must not change its API. After an intended change to
//! the API, `UPDATE_OPENAPI=1 cargo test -p server --test integration openapi::` saves the new document, and
//! its diff is the change to review.

use crate::common::*;
use serde_json::Value;
use server::ServerConfig;

const SAVED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/openapi.json");

/// The document with the parts that are not API made constant: the record's version label
/// (it changes with the shipped weights), and lists of strings put in order.
fn normalised(mut spec: Value) -> Value {
    spec["info"]["version"] = Value::from("<record version>");
    sort_names(&mut spec);
    spec
}

/// Puts every list of strings under `v` in order.
fn sort_names(v: &mut Value) {
    match v {
        Value::Array(items) => {
            items.iter_mut().for_each(sort_names);
            if items.iter().all(Value::is_string) {
                items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
        Value::Object(map) => map.values_mut().for_each(sort_names),
        _ => {}
    }
}

#[test]
fn the_served_openapi_document_is_the_saved_one() {
    let s = start(ServerConfig::default());
    let (status, body) = get(&s, "/openapi.json");
    assert_eq!(status, 200);
    let served = normalised(serde_json::from_str(&body).unwrap());
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        let text = serde_json::to_string_pretty(&served).unwrap() + "\n";
        std::fs::create_dir_all(std::path::Path::new(SAVED).parent().unwrap()).unwrap();
        std::fs::write(SAVED, text).unwrap();
        return;
    }
    let saved: Value = serde_json::from_str(
        &std::fs::read_to_string(SAVED).expect("tests/fixtures/openapi.json (UPDATE_OPENAPI=1)"),
    )
    .unwrap();
    assert!(
        served == normalised(saved),
        "the served OpenAPI document differs from tests/fixtures/openapi.json; if the API was \
         meant to change, UPDATE_OPENAPI=1 saves it:\n{}",
        serde_json::to_string_pretty(&served).unwrap()
    );
}
