//! `GET /openapi.json` held to what the server really does: the document is valid OpenAPI 3.1,
//! documents exactly the routes the router serves, and real answers — bodies, status codes,
//! content types and required headers — match the documented responses. Schemas are closed
//! (`additionalProperties: false`), so a field added to an answer fails here until documented.

use crate::support::fake_neon::{FakeNeon, FakeNeonOptions};
use crate::support::*;
use jsonschema::{Draft, Registry, Validator};
use previewdb::configuration::{PostgresTargetConfig, TargetConfig};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;

/// Every route of the router, with its methods: what the document must describe, no more.
const ROUTES: &[(&str, &[&str])] = &[
    ("/v1/environments", &["get", "post"]),
    ("/v1/environments/{ref}", &["delete", "get"]),
    ("/v1/environments/{ref}/extend", &["post"]),
    ("/v1/environments/{ref}/credentials", &["post"]),
    ("/v1/environments/{ref}/reset", &["post"]),
    ("/v1/environments/{ref}/migrate", &["post"]),
    ("/v1/environments/{ref}/events", &["get"]),
    ("/v1/events", &["get"]),
    ("/v1/blueprints", &["get"]),
    ("/v1/blueprints/{name}", &["get"]),
    ("/v1/blueprints/{name}/prepare", &["post"]),
    ("/v1/sweep", &["post"]),
    ("/v1/targets", &["get"]),
    ("/healthz", &["get"]),
    ("/readyz", &["get"]),
    ("/metrics", &["get"]),
    ("/openapi.json", &["get"]),
];

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

const DOC_URI: &str = "urn:previewdb:openapi";

fn routes() -> BTreeMap<String, BTreeSet<String>> {
    ROUTES
        .iter()
        .map(|(p, ms)| (p.to_string(), ms.iter().map(|m| m.to_string()).collect()))
        .collect()
}

/// The routes as written in the router's source: `.route("/path", get(…).post(…))`.
fn routes_in_router_source() -> BTreeMap<String, BTreeSet<String>> {
    let src = include_str!("../../src/http/mod.rs");
    let mut out = BTreeMap::new();
    for chunk in src.split(".route(").skip(1) {
        let rest = chunk
            .trim_start()
            .strip_prefix('"')
            .expect("a route path literal");
        let end = rest.find('"').unwrap();
        let path = &rest[..end];
        let mut depth = 1;
        let mut args = "";
        for (i, c) in rest[end + 1..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        args = &rest[end + 1..end + 1 + i];
                        break;
                    }
                }
                _ => {}
            }
        }
        assert!(
            !args.contains("any("),
            "{path}: `any` routes are not understood here"
        );
        let mut methods = BTreeSet::new();
        for m in HTTP_METHODS {
            let call = format!("{m}(");
            let mut from = 0;
            while let Some(i) = args[from..].find(&call) {
                let at = from + i;
                let before = args[..at].chars().last();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    methods.insert(m.to_string());
                }
                from = at + call.len();
            }
        }
        assert!(!methods.is_empty(), "{path}: no method found in {args:?}");
        out.insert(path.to_string(), methods);
    }
    out
}

/// `/` and `~` escaped for a JSON pointer token.
fn escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn pointer(tokens: &[&str]) -> String {
    tokens.iter().map(|t| format!("/{}", escape(t))).collect()
}

/// A JSON pointer as a URI fragment.
fn fragment(pointer: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'~')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.');
    percent_encoding::utf8_percent_encode(pointer, KEEP).to_string()
}

/// Follows a `$ref` to a local component, once.
fn deref<'a>(doc: &'a Value, v: &'a Value) -> (&'a Value, String, Option<String>) {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let p = r.strip_prefix('#').expect("local ref");
            (
                doc.pointer(p).unwrap_or_else(|| panic!("dangling {r}")),
                p.to_owned(),
                Some(r.to_owned()),
            )
        }
        None => (v, String::new(), None),
    }
}

/// A request body for `Api::call`.
enum Body {
    None,
    Json(Value),
    /// Bytes with an optional content type.
    Raw(Option<&'static str>, String),
}

/// The document, with validators for its schemas, and a log of what was checked.
struct Doc {
    doc: Value,
    registry: Registry<'static>,
    seen: Mutex<BTreeSet<(String, String, u16)>>,
}

impl Doc {
    fn new(doc: Value) -> Doc {
        let registry = Registry::new()
            .draft(Draft::Draft202012)
            .add(DOC_URI, doc.clone())
            .expect("registry")
            .prepare()
            .expect("the document's refs resolve");
        Doc {
            doc,
            registry,
            seen: Mutex::default(),
        }
    }

    /// A validator for the schema at `pointer` in the document.
    fn validator(&self, pointer: &str) -> Validator {
        assert!(
            self.doc.pointer(pointer).is_some(),
            "no schema at {pointer}"
        );
        jsonschema::options()
            .with_draft(Draft::Draft202012)
            .should_validate_formats(true)
            .with_registry(&self.registry)
            .build(&json!({ "$ref": format!("{DOC_URI}#{}", fragment(pointer)) }))
            .unwrap_or_else(|e| panic!("schema at {pointer}: {e}"))
    }

    fn errors(&self, pointer: &str, instance: &Value) -> Vec<String> {
        self.validator(pointer)
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    fn assert_valid(&self, pointer: &str, instance: &Value, what: &str) {
        let errors = self.errors(pointer, instance);
        assert!(
            errors.is_empty(),
            "{what}: does not match {pointer}:\n  {}\n{instance:#}",
            errors.join("\n  ")
        );
    }

    /// The documented path template that `path` (without its query) falls under.
    fn template(&self, path: &str) -> Option<String> {
        let segs: Vec<&str> = path.split('/').collect();
        self.doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .find(|t| {
                let ts: Vec<&str> = t.split('/').collect();
                ts.len() == segs.len()
                    && ts.iter().zip(&segs).all(|(t, s)| {
                        (t.starts_with('{') && t.ends_with('}') && !s.is_empty()) || t == s
                    })
            })
            .cloned()
    }
}

struct Api<'a> {
    app: &'a TestApp,
    doc: &'a Doc,
}

impl Api<'_> {
    /// Sends a request and checks the answer against the document: the operation exists, the
    /// status is documented for it, the content type and body match the documented response,
    /// required headers are there; a JSON request body is checked against the documented
    /// request schema (accepted when the server accepted it, refused when the server called it
    /// an invalid body).
    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        token: Option<&str>,
        body: Body,
    ) -> (StatusCode, Value, HeaderMap) {
        let mut req = self.app.http.request(
            method.clone(),
            format!("{}{}", self.app.base, path_and_query),
        );
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let request_json = match body {
            Body::None => None,
            Body::Json(v) => {
                req = req.json(&v);
                Some(v)
            }
            Body::Raw(ct, text) => {
                if let Some(ct) = ct {
                    req = req.header("content-type", ct);
                }
                req = req.body(text);
                None
            }
        };
        let res = req.send().await.expect("request sent");
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap_or_default();
        let what = format!("{method} {path_and_query} → {status}");

        let path = path_and_query.split('?').next().unwrap();
        let doc = &self.doc.doc;
        let template = self
            .doc
            .template(path)
            .unwrap_or_else(|| panic!("{what}: path not in the document"));
        let m = method.as_str().to_ascii_lowercase();
        let op_ptr = pointer(&["paths", &template, &m]);
        let op = doc
            .pointer(&op_ptr)
            .unwrap_or_else(|| panic!("{what}: operation not in the document"));
        assert!(
            headers.contains_key("x-request-id"),
            "{what}: no x-request-id"
        );

        let code = status.as_u16().to_string();
        let documented = op["responses"]
            .get(&code)
            .unwrap_or_else(|| panic!("{what}: status not documented for {m} {template}: {text}"));
        let (response, component, _) = deref(doc, documented);
        let response_ptr = if component.is_empty() {
            format!("{op_ptr}/responses/{code}")
        } else {
            component
        };

        for (name, h) in response["headers"].as_object().into_iter().flatten() {
            let (h, h_ptr, _) = deref(doc, h);
            let h_ptr = if h_ptr.is_empty() {
                format!("{response_ptr}/headers/{}", escape(name))
            } else {
                h_ptr
            };
            let value = headers.get(name.as_str()).map(|v| v.to_str().unwrap());
            if h["required"] == true {
                assert!(value.is_some(), "{what}: header {name} missing");
            }
            if let Some(v) = value {
                let v = serde_json::from_str::<Value>(v)
                    .ok()
                    .filter(|_| h["schema"]["type"] == "integer")
                    .unwrap_or_else(|| Value::String(v.to_owned()));
                self.doc
                    .assert_valid(&format!("{h_ptr}/schema"), &v, &format!("{what}: {name}"));
            }
        }

        let body = match response.get("content").and_then(Value::as_object) {
            None => {
                assert!(text.is_empty(), "{what}: undocumented body {text}");
                Value::Null
            }
            Some(content) => {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let media = ct.split(';').next().unwrap().trim().to_owned();
                assert!(
                    content.contains_key(&media),
                    "{what}: content type {ct:?} not documented ({:?})",
                    content.keys().collect::<Vec<_>>()
                );
                let body = if media.ends_with("json") {
                    serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"))
                } else {
                    Value::String(text.clone())
                };
                let schema_ptr = format!("{response_ptr}/content/{}/schema", escape(&media));
                self.doc.assert_valid(&schema_ptr, &body, &what);
                body
            }
        };

        if let Some(sent) = &request_json {
            let req_ptr = format!("{op_ptr}/requestBody/content/application~1json/schema");
            assert!(
                doc.pointer(&req_ptr).is_some(),
                "{what}: a JSON body was sent, but the document has no request body"
            );
            let errors = self.doc.errors(&req_ptr, sent);
            if status.is_success() {
                assert!(
                    errors.is_empty(),
                    "{what}: the server accepted a body the document refuses: {errors:?}\n{sent}"
                );
            }
            if body["code"] == "invalid_body" {
                assert!(
                    !errors.is_empty(),
                    "{what}: the server refused a body the document accepts: {body}\n{sent}"
                );
            }
        }

        self.doc
            .seen
            .lock()
            .unwrap()
            .insert((template, m, status.as_u16()));
        (status, body, headers)
    }

    async fn admin(&self, method: Method, path: &str, body: Body) -> (StatusCode, Value) {
        let (s, b, _) = self.call(method, path, Some(ADMIN_TOKEN), body).await;
        (s, b)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.admin(Method::GET, path, Body::None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.admin(Method::POST, path, Body::Json(body)).await
    }

    async fn post_empty(&self, path: &str) -> (StatusCode, Value) {
        self.admin(Method::POST, path, Body::None).await
    }
}

async fn fetch_document(app: &TestApp) -> Value {
    let res = app
        .http
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/json");
    res.json().await.expect("the document is JSON")
}

/// A small blueprint of plain migrations and seeds, written under `dir`.
fn blueprint_toml(dir: &Path) -> String {
    let mig = dir.join("migrations");
    let seeds = dir.join("data");
    std::fs::create_dir_all(&mig).unwrap();
    std::fs::create_dir_all(&seeds).unwrap();
    std::fs::write(
        mig.join("001_init.sql"),
        "CREATE TABLE notes (id int PRIMARY KEY, body text);",
    )
    .unwrap();
    std::fs::write(
        seeds.join("001_notes.sql"),
        "INSERT INTO notes VALUES (1, 'hello');",
    )
    .unwrap();
    format!(
        "[blueprints.notes]\nmigrations = {:?}\nmigrations_format = \"plain\"\nseeds = {:?}\npool_size = 1\n",
        mig.display().to_string(),
        seeds.display().to_string()
    )
}

async fn app_with(
    dir: &Path,
    extra_toml: &str,
    edit: impl FnOnce(&mut previewdb::configuration::Config),
) -> TestApp {
    let file = dir.join("extra.toml");
    std::fs::write(&file, format!("{}{extra_toml}", blueprint_toml(dir))).unwrap();
    let cluster = cluster().await;
    let mut config = cluster.config.clone();
    config.merge_file(&file).expect("test config");
    edit(&mut config);
    TestApp::spawn_with(cluster, config).await
}

#[tokio::test]
async fn the_document_is_openapi_3_1_served_without_a_token() {
    let app = TestApp::spawn().await;
    let doc = fetch_document(&app).await;

    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "previewdb");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    // The structure, against the OpenAPI Initiative's schema of 3.1 documents
    // (https://spec.openapis.org/oas/3.1/schema/2022-10-07).
    let oas: Value =
        serde_json::from_str(include_str!("../fixtures/openapi-3.1-schema.json")).unwrap();
    let oas = jsonschema::options()
        .with_draft(Draft::Draft202012)
        .build(&oas)
        .expect("the OAS 3.1 schema compiles");
    let errors: Vec<String> = oas
        .iter_errors(&doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "not OpenAPI 3.1:\n{}", errors.join("\n"));

    // Every component schema is a JSON Schema 2020-12 schema, every local $ref resolves.
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        jsonschema::draft202012::meta::validate(schema)
            .unwrap_or_else(|e| panic!("components.schemas.{name}: {e}"));
    }
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = vec![];
    refs(&doc, &mut all);
    for r in all {
        let p = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("non-local ref {r}"));
        assert!(doc.pointer(p).is_some(), "dangling ref {r}");
    }
    // And they compile with their refs (the registry resolves the whole document).
    let checked = Doc::new(doc.clone());
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        checked.validator(&pointer(&["components", "schemas", name]));
    }

    // Operations: unique ids, each path parameter declared, a success answer, and the
    // security the server applies: a bearer token with one scope on /v1, none elsewhere.
    let scopes = [
        "environments:read",
        "environments:write",
        "environments:delete",
        "admin",
    ];
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        fn collect<'a>(doc: &'a Value, params: &'a Value, out: &mut Vec<&'a str>) {
            for p in params.as_array().into_iter().flatten() {
                let (p, _, _) = deref(doc, p);
                if p["in"] == "path" {
                    assert_eq!(p["required"], true, "{p}: path parameter not required");
                    out.push(p["name"].as_str().unwrap());
                }
            }
        }
        let mut declared: Vec<&str> = vec![];
        collect(&doc, &item["parameters"], &mut declared);
        for (m, op) in item.as_object().unwrap() {
            if !HTTP_METHODS.contains(&m.as_str()) {
                continue;
            }
            collect(&doc, &op["parameters"], &mut declared);
            let id = op["operationId"].as_str().expect("operationId");
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            assert!(
                op["responses"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .any(|s| s.starts_with('2')),
                "{m} {path}: no success answer"
            );
            let security = op["security"].as_array().expect("security per operation");
            if path.starts_with("/v1/") {
                assert_eq!(security.len(), 1, "{m} {path}");
                let needed = security[0]["bearerAuth"].as_array().expect("bearerAuth");
                assert_eq!(needed.len(), 1, "{m} {path}: one scope");
                assert!(scopes.contains(&needed[0].as_str().unwrap()), "{m} {path}");
                for s in ["401", "403"] {
                    assert!(op["responses"].get(s).is_some(), "{m} {path}: no {s}");
                }
            } else {
                assert!(security.is_empty(), "{m} {path}: needs no token");
            }
        }
        let in_path: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        let declared: BTreeSet<&str> = declared.into_iter().collect();
        assert_eq!(in_path, declared, "{path}: path parameters");
    }

    // The migrate answer lists the Environment's fields, plus `applied`.
    let schemas = &doc["components"]["schemas"];
    let keys = |s: &Value, k: &str| -> BTreeSet<String> {
        match &s[k] {
            Value::Object(m) => m.keys().cloned().collect(),
            Value::Array(a) => a.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
            _ => BTreeSet::new(),
        }
    };
    for k in ["properties", "required"] {
        let mut env = keys(&schemas["Environment"], k);
        env.insert("applied".into());
        assert_eq!(
            env,
            keys(&schemas["MigrationResult"], k),
            "MigrationResult {k}"
        );
    }
}

#[tokio::test]
async fn the_document_describes_exactly_the_routes_the_router_serves() {
    let app = TestApp::spawn().await;
    let doc = fetch_document(&app).await;

    assert_eq!(
        routes(),
        routes_in_router_source(),
        "ROUTES here is out of date with src/http/mod.rs"
    );
    let documented: BTreeMap<String, BTreeSet<String>> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, item)| {
            let ms = item
                .as_object()
                .unwrap()
                .keys()
                .filter(|m| HTTP_METHODS.contains(&m.as_str()))
                .cloned()
                .collect();
            (p.clone(), ms)
        })
        .collect();
    assert_eq!(documented, routes(), "paths of the document");

    // Every documented operation is served: the answer is documented for it, and is neither
    // the router's "no such route" nor "method not allowed".
    let doc = Doc::new(doc);
    let api = Api {
        app: &app,
        doc: &doc,
    };
    for (path, methods) in routes() {
        let concrete = path
            .replace("{ref}", "openapi%2Fno-such%23env")
            .replace("{name}", "no-such-blueprint");
        for m in methods {
            let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap();
            let body = if doc.doc["paths"][&path][&m]["requestBody"].is_object() {
                Body::Json(json!({}))
            } else {
                Body::None
            };
            let (status, body, _) = api.call(method, &concrete, Some(ADMIN_TOKEN), body).await;
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}");
            assert!(
                !(status == StatusCode::NOT_FOUND && body["detail"] == "no such route"),
                "{m} {path}: the router does not serve it"
            );
        }
    }

    // What the document says of paths and methods it does not list.
    let (status, body) = app.get("/v1/no-such-route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["detail"], "no such route");
    assert_eq!(body["code"], "not_found");
    doc.assert_valid("/components/schemas/Problem", &body, "fallback");
    let res = app
        .http
        .post(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(res.headers().contains_key("allow"));
    assert!(res.text().await.unwrap().is_empty());
    let res = app
        .http
        .head(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "GET routes answer HEAD");
}

#[tokio::test]
async fn real_answers_match_the_documented_schemas() {
    let fake = FakeNeon::start(FakeNeonOptions::default()).await;
    let var = "PREVIEWDB_TEST_NEON_OPENAPI";
    std::env::set_var(var, fake.api_key());
    let neon = format!(
        "[targets.neon]\nkind = \"neon\"\napi_url = {:?}\napi_key_env = {var:?}\nproject_id = {:?}\n\
         parent_branch = \"preview-seed\"\ndeadline = \"20s\"\nretry_base_ms = 10\npoll_interval_ms = 20\n\
         max_environments = 5\n",
        fake.url(),
        fake.project_id()
    );
    let dir = temp_dir();
    let app = app_with(dir.path(), &neon, |_| {}).await;
    let doc = Doc::new(fetch_document(&app).await);
    let api = Api {
        app: &app,
        doc: &doc,
    };
    let no_password = |env: &Value| {
        let c = &env["connection"];
        if c.is_null() {
            return;
        }
        assert!(c.get("password").is_none(), "{env}");
        let userinfo = c["uri"].as_str().unwrap()["postgresql://".len()..]
            .split('@')
            .next()
            .unwrap();
        assert!(!userinfo.contains(':'), "{env}");
    };

    // Create: 201, then 200 for the same settings, 409 for others.
    let create = json!({
        "key": "openapi/web#1",
        "blueprint": "notes",
        "ttl": "2h",
        "labels": { "repo": "acme/web", "pr": "1" },
        "migrations": [{ "name": "002_more.sql", "sql": "ALTER TABLE notes ADD COLUMN extra int;" }]
    });
    let (status, env) = api.post("/v1/environments", create.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    assert_eq!(env["blueprint"], "notes");
    assert!(env["blueprint_hash"].is_string(), "{env}");
    let id = env["id"].as_str().unwrap().to_owned();
    let path = env_path("openapi/web#1");
    let (status, again) = api.post("/v1/environments", create.clone()).await;
    assert_eq!((status, &again["id"]), (StatusCode::OK, &env["id"]));
    let mut other = create.clone();
    other["target"] = json!("other");
    let (status, p) = api.post("/v1/environments", other).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::CONFLICT, Some("settings_conflict"))
    );

    // Nulls where the create body allows them; schema isolation; an isolation the target lacks;
    // an empty blueprint.
    let (status, e) = api
        .post(
            "/v1/environments",
            json!({ "key": "openapi/nulls", "blueprint": null, "target": null, "isolation": null, "ttl": null }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{e}");
    let (status, e) = api
        .post(
            "/v1/environments",
            json!({ "key": "openapi/schema", "blueprint": "notes", "isolation": "schema" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{e}");
    assert!(e["connection"]["schema"].is_string(), "{e}");
    let (status, e) = api
        .post(
            "/v1/environments",
            json!({ "key": "openapi/branch", "isolation": "branch" }),
        )
        .await;
    assert_eq!(
        (status, e["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_input")),
        "{e}"
    );
    let (status, e) = api
        .post(
            "/v1/environments",
            json!({ "key": "openapi/empty", "blueprint": "" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{e}");
    assert_eq!(e["blueprint"], Value::Null);

    // A Neon branch.
    let (status, e) = api
        .post(
            "/v1/environments",
            json!({ "key": "openapi/neon", "target": "neon" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{e}");
    assert_eq!(e["isolation"], "branch");

    // A failed create leaves a failed record with its error and no connection.
    let (status, p) = api
        .post(
            "/v1/environments",
            json!({ "key": "openapi/failed", "migrations": [{ "name": "002_bad.sql", "sql": "SELECT nope;" }] }),
        )
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("migration_failed"))
    );
    let (status, failed) = api.get(&env_path("openapi/failed")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(failed["state"], "failed");
    assert!(failed["error"].is_string(), "{failed}");
    assert_eq!(failed["connection"], Value::Null);

    // Get, by key and by id, with and without the password.
    let (status, got) = api.get(&path).await;
    assert_eq!(status, StatusCode::OK);
    no_password(&got);
    let (status, got) = api.get(&format!("{path}?reveal=false")).await;
    assert_eq!(status, StatusCode::OK);
    no_password(&got);
    let (status, revealed) = api.get(&format!("/v1/environments/{id}?reveal=true")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        revealed["connection"]["password"],
        env["connection"]["password"]
    );
    let (status, p) = api.get(&format!("{path}?reveal=maybe")).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query"))
    );
    let (status, p) = api
        .admin(Method::DELETE, "/v1/environments/%FF%FE", Body::None)
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_path"))
    );
    let (status, p) = api.get(&env_path("openapi/never-was")).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    // List, with each filter.
    for q in [
        "",
        "?key=openapi%2Fweb%231",
        "?label=repo=acme/web,pr=1",
        "?state=ready",
        "?state=failed",
        "?target=neon",
    ] {
        let (status, list) = api.get(&format!("/v1/environments{q}")).await;
        assert_eq!(status, StatusCode::OK, "{q}: {list}");
        assert!(!list["items"].as_array().unwrap().is_empty(), "{q}: {list}");
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .for_each(no_password);
    }
    for q in ["?state=bogus", "?label=nolabel"] {
        let (status, p) = api.get(&format!("/v1/environments{q}")).await;
        assert_eq!(
            (status, p["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_input")),
            "{q}"
        );
    }
    let (status, _) = api.get("/v1/environments?label=a=b&label=c=d").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Extend, rotate, reset, migrate.
    let (status, extended) = api
        .post(&format!("{path}/extend"), json!({ "ttl": "1d" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{extended}");
    assert_ne!(extended["expires_at"], env["expires_at"]);
    let (status, p) = api
        .post(&format!("{path}/extend"), json!({ "ttl": "forever" }))
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_input"))
    );
    let (status, p) = api
        .post(
            &format!("{path}/extend"),
            json!({ "ttl": "1d", "colour": "red" }),
        )
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_body"))
    );
    let (status, p) = api
        .admin(
            Method::POST,
            &format!("{path}/extend"),
            Body::Raw(None, "{\"ttl\": \"1d\"}".into()),
        )
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );
    let (status, rotated) = api.post_empty(&format!("{path}/credentials")).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_ne!(
        rotated["connection"]["password"],
        env["connection"]["password"]
    );
    let (status, reset) = api.post_empty(&format!("{path}/reset")).await;
    assert_eq!(status, StatusCode::OK, "{reset}");
    let (status, migrated) = api
        .post(
            &format!("{path}/migrate"),
            json!({ "migrations": [{ "name": "003_again.sql", "sql": "ALTER TABLE notes ADD COLUMN again int;" }] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{migrated}");
    assert_eq!(migrated["applied"], 1);
    let (status, p) = api
        .post(
            &format!("{path}/migrate"),
            json!({ "migrations": [{ "name": "bad name.sql", "sql": "" }] }),
        )
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_input"))
    );
    let (status, p) = api
        .post(
            &format!("{path}/migrate"),
            json!({ "migrations": [{ "name": "004_x.sql" }] }),
        )
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_body"))
    );
    let (status, p) = api
        .admin(
            Method::POST,
            "/v1/environments",
            Body::Raw(Some("application/json"), "{\"key\": ".into()),
        )
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_json"))
    );
    for bad in [
        json!({}),
        json!({ "key": 7 }),
        json!({ "key": "k", "colour": "red" }),
        json!({ "key": "k", "labels": null }),
    ] {
        let (status, p) = api.post("/v1/environments", bad.clone()).await;
        assert_eq!(
            (status, p["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_body")),
            "{bad}"
        );
    }

    // Tokens: none, unknown, without the scope.
    let (status, p, h) = api
        .call(Method::GET, "/v1/environments", None, Body::None)
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    assert_eq!(h["www-authenticate"], "Bearer");
    let (status, _, _) = api.call(Method::GET, &path, Some("nope"), Body::None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, p, _) = api
        .call(
            Method::POST,
            &format!("{path}/credentials"),
            Some(READ_TOKEN),
            Body::None,
        )
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (status, _, _) = api
        .call(
            Method::POST,
            "/v1/blueprints/notes/prepare",
            Some(WRITE_TOKEN),
            Body::None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Blueprints, targets.
    let (status, list) = api.get("/v1/blueprints").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["items"][0]["name"], "notes");
    let (status, prepared) = api.post_empty("/v1/blueprints/notes/prepare").await;
    assert_eq!(status, StatusCode::OK, "{prepared}");
    assert_eq!(prepared["targets"]["local"]["template"], "ready");
    let (status, bp) = api.get("/v1/blueprints/notes").await;
    assert_eq!(status, StatusCode::OK, "{bp}");
    assert!(bp["targets"]["local"]["hash"].is_string(), "{bp}");
    let (status, _) = api.get("/v1/blueprints/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, targets) = api.get("/v1/targets").await;
    assert_eq!(status, StatusCode::OK, "{targets}");
    let kinds: BTreeSet<&str> = targets["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["neon", "postgres"]));

    // Sweep: an environment that expired is in the report (unless another app's background
    // sweeper on the shared cluster took it first: then try again).
    let mut swept = false;
    for attempt in 0..3 {
        let key = format!("openapi/expiring-{attempt}");
        let (status, e) = api
            .post("/v1/environments", json!({ "key": key, "ttl": "1s" }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{e}");
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        let (status, report) = api.post_empty("/v1/sweep").await;
        assert_eq!(status, StatusCode::OK, "{report}");
        if report["deleted"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["key"] == key.as_str())
        {
            swept = true;
            break;
        }
    }
    assert!(swept, "no sweep report with an item to check");

    // The audit trail: of the environment, and of every key.
    let (status, events) = api.get(&format!("{path}/events?limit=2")).await;
    assert_eq!(status, StatusCode::OK, "{events}");
    assert!(!events["items"].as_array().unwrap().is_empty(), "{events}");
    let (status, events) = api.get("/v1/events?since=2020-01-01T00:00:00Z").await;
    assert_eq!(status, StatusCode::OK, "{events}");

    // Delete: the tombstone, twice; then it is listed only with state=deleted; 409 not ready.
    for _ in 0..2 {
        let (status, deleted) = api.admin(Method::DELETE, &path, Body::None).await;
        assert_eq!(status, StatusCode::OK, "{deleted}");
        assert_eq!(deleted["state"], "deleted");
        assert!(deleted["deleted_at"].is_string());
    }
    let (status, tomb) = api.get(&format!("{path}?reveal=true")).await;
    assert_eq!(status, StatusCode::OK);
    no_password(&tomb);
    let (status, list) = api
        .get("/v1/environments?state=deleted&key=openapi%2Fweb%231")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    let (status, p) = api
        .post(&format!("{path}/extend"), json!({ "ttl": "1h" }))
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_ready"))
    );
    let (status, _) = api.post_empty(&format!("{path}/reset")).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Service endpoints.
    let (status, _, _) = api.call(Method::GET, "/healthz", None, Body::None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = api.call(Method::GET, "/readyz", None, Body::None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = api.call(Method::GET, "/metrics", None, Body::None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = api
        .call(Method::GET, "/openapi.json", None, Body::None)
        .await;
    assert_eq!(status, StatusCode::OK);

    // Every operation has had a success answer checked.
    let seen = doc.seen.lock().unwrap().clone();
    for (path, methods) in routes() {
        for m in methods {
            assert!(
                seen.iter()
                    .any(|(p, sm, s)| *p == path && *sm == m && (200..300).contains(s)),
                "{m} {path}: no success answer was checked"
            );
        }
    }
}

#[tokio::test]
async fn trouble_answers_match_the_document() {
    let dir = temp_dir();
    let app = app_with(dir.path(), "", |config| {
        config.max_body_bytes = 1024;
        let TargetConfig::Postgres(local) = config.targets["local"].clone() else {
            unreachable!()
        };
        config.targets.insert(
            "full".into(),
            TargetConfig::Postgres(PostgresTargetConfig {
                max_environments: 0,
                ..local.clone()
            }),
        );
        config.targets.insert(
            "down".into(),
            TargetConfig::Postgres(PostgresTargetConfig {
                admin_url: "postgres://previewdb_admin@127.0.0.1:1/postgres".into(),
                revoke_public_connect: false,
                ..local
            }),
        );
    })
    .await;
    let doc = Doc::new(fetch_document(&app).await);
    let api = Api {
        app: &app,
        doc: &doc,
    };

    let (status, p) = api
        .post(
            "/v1/environments",
            json!({ "key": "openapi/full", "target": "full" }),
        )
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("limit_reached"))
    );
    let (status, p) = api
        .post(
            "/v1/environments",
            json!({ "key": "openapi/down", "target": "down", "blueprint": "" }),
        )
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );
    let (status, p) = api
        .post(
            "/v1/environments",
            json!({ "key": "openapi/big", "labels": { "a": "x".repeat(2048) } }),
        )
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
    );

    // The unreachable target shows in targets and in the blueprint's status.
    let (status, targets) = api.get("/v1/targets").await;
    assert_eq!(status, StatusCode::OK, "{targets}");
    let down = targets["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "down")
        .unwrap();
    assert_eq!(down["health"]["healthy"], false);
    assert!(down["health"]["error"].is_string());
    let (status, bp) = api.get("/v1/blueprints/notes").await;
    assert_eq!(status, StatusCode::OK, "{bp}");
    assert_eq!(bp["targets"]["down"]["template"], "unknown");
    assert_eq!(bp["targets"]["down"]["hash"], Value::Null);
    let (status, p) = api.post_empty("/v1/blueprints/notes/prepare").await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );
}
