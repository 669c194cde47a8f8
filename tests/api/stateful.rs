//! An in-process upstream that keeps state like OpenAI does for the model-less families: files
//! (multipart uploads parsed as they stream, hashed, content kept when small), batches that
//! complete when polled and can be cancelled, vector stores with files and search,
//! conversations and items, threads and runs, fine-tuning jobs; retrieve, list and delete for
//! each. Creations that reference ids (a batch's `input_file_id`, ...) fail with a 400 when the
//! id is not this upstream's, as OpenAI's would: a request routed to the wrong provider shows.
use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// A request the upstream received (its body is not kept: uploads are large).
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A file as the upstream stored it.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub len: u64,
    pub sha256: String,
}

#[derive(Default)]
struct Store {
    /// Distinguishes this upstream's ids from another's (`file-a1`, `file-b1`).
    tag: String,
    next: AtomicU64,
    objects: Mutex<HashMap<String, Value>>,
    contents: Mutex<HashMap<String, Bytes>>,
    files: Mutex<HashMap<String, StoredFile>>,
    /// Items of each conversation and messages of each thread.
    children: Mutex<HashMap<String, Vec<Value>>>,
    seen: Mutex<Vec<Seen>>,
}

/// Files up to this size keep their content for `GET /v1/files/{id}/content`.
const KEPT_CONTENT: u64 = 1024 * 1024;

pub struct StatefulUpstream {
    pub url: String,
    store: Arc<Store>,
    handle: ServerHandle,
}

impl StatefulUpstream {
    /// Starts on 127.0.0.1:0; `tag` goes in every id it makes.
    pub async fn start(tag: &str) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind stateful upstream");
        let port = listener.local_addr().unwrap().port();
        let store = Arc::new(Store {
            tag: tag.to_owned(),
            ..Store::default()
        });
        let data = web::Data::from(Arc::clone(&store));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(handle))
        })
        .workers(1)
        .shutdown_timeout(0)
        .disable_signals()
        .listen(listener)
        .expect("listen stateful upstream")
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url: format!("http://127.0.0.1:{port}"),
            store,
            handle,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.store.seen.lock().unwrap().clone()
    }

    /// Whether this upstream holds the object `id` (any family).
    pub fn holds(&self, id: &str) -> bool {
        self.store.objects.lock().unwrap().contains_key(id)
    }

    pub fn file(&self, id: &str) -> Option<StoredFile> {
        self.store.files.lock().unwrap().get(id).cloned()
    }
}

impl Drop for StatefulUpstream {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

async fn handle(
    request: HttpRequest,
    payload: web::Payload,
    store: web::Data<Store>,
) -> HttpResponse {
    store.seen.lock().unwrap().push(Seen {
        method: request.method().to_string(),
        uri: request.uri().to_string(),
        headers: request
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
    });
    let path = request.path().trim_start_matches("/v1/").to_owned();
    let segments: Vec<&str> = path.split('/').collect();
    let method = request.method().as_str().to_owned();
    if method == "POST" && path == "files" {
        return upload_file(&request, payload, &store).await;
    }
    let body = read_json(payload).await;
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["files", id, "content"]) => match store.contents.lock().unwrap().get(*id) {
            Some(content) => HttpResponse::Ok()
                .content_type("application/octet-stream")
                .body(content.clone()),
            None => not_found(id),
        },
        ("POST", ["batches"]) => {
            let input = body["input_file_id"].as_str().unwrap_or("").to_owned();
            if !store.has(&input) {
                return invalid(&format!("No such File object: {input}"));
            }
            let batch = json!({
                "object": "batch",
                "endpoint": body["endpoint"],
                "input_file_id": input,
                "completion_window": body["completion_window"],
                "status": "validating",
                "created_at": 1_700_000_000,
            });
            HttpResponse::Ok().json(store.create("batch", batch))
        }
        ("GET", ["batches", id]) => {
            // Polling moves a batch along: validating -> in_progress -> completed with output.
            let mut objects = store.objects.lock().unwrap();
            let Some(batch) = objects.get_mut(*id) else {
                return not_found(id);
            };
            let next = match batch["status"].as_str() {
                Some("validating") => Some("in_progress"),
                Some("in_progress") => Some("completed"),
                _ => None,
            };
            if let Some(next) = next {
                batch["status"] = json!(next);
            }
            if next == Some("completed") {
                let output_id = format!("file-{}out{}", store.tag, id);
                batch["output_file_id"] = json!(output_id);
                store.contents.lock().unwrap().insert(
                    output_id,
                    Bytes::from_static(b"{\"custom_id\":\"r1\",\"response\":{\"status_code\":200}}\n"),
                );
            }
            HttpResponse::Ok().json(batch.clone())
        }
        ("POST", ["batches", id, "cancel"]) => store.update(id, json!({"status": "cancelled"})),
        ("POST", ["vector_stores"]) => {
            let file_ids: Vec<String> = body["file_ids"]
                .as_array()
                .map(|ids| ids.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            if let Some(missing) = file_ids.iter().find(|id| !store.has(id)) {
                return invalid(&format!("No such File object: {missing}"));
            }
            let count = file_ids.len();
            let vector_store = json!({
                "object": "vector_store",
                "created_at": 1_700_000_000,
                "name": body["name"],
                "usage_bytes": 0,
                "file_counts": {"in_progress": 0, "completed": count, "failed": 0, "cancelled": 0, "total": count},
                "status": "completed",
                "file_ids": file_ids,
            });
            HttpResponse::Ok().json(store.create("vs", vector_store))
        }
        ("POST", ["vector_stores", id, "search"]) => {
            let Some(vector_store) = store.get(id) else {
                return not_found(id);
            };
            let query = body["query"].as_str().unwrap_or("").to_owned();
            let data: Vec<Value> = vector_store["file_ids"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|file_id| {
                    json!({
                        "file_id": file_id,
                        "filename": store.get(file_id.as_str().unwrap_or("")).map(|f| f["filename"].clone()),
                        "score": 0.9,
                        "attributes": {},
                        "content": [{"type": "text", "text": format!("about {query}")}],
                    })
                })
                .collect();
            HttpResponse::Ok().json(json!({
                "object": "vector_store.search_results.page",
                "search_query": [query],
                "data": data,
                "has_more": false,
                "next_page": null,
            }))
        }
        ("POST", ["conversations"]) => HttpResponse::Ok().json(store.create(
            "conv",
            json!({"object": "conversation", "created_at": 1_700_000_000, "metadata": body["metadata"]}),
        )),
        ("POST", ["conversations", id, "items"]) | ("POST", ["threads", id, "messages"]) => {
            if !store.has(id) {
                return not_found(id);
            }
            let items: Vec<Value> = match body.get("items") {
                Some(Value::Array(items)) => items.clone(),
                _ => vec![body.clone()],
            };
            let created: Vec<Value> = items
                .into_iter()
                .map(|mut item| {
                    item["id"] = json!(store.new_id("item"));
                    item["thread_id"] = json!(id);
                    item["object"] = json!("thread.message");
                    item["created_at"] = json!(1_700_000_000);
                    item
                })
                .collect();
            store
                .children
                .lock()
                .unwrap()
                .entry((*id).to_owned())
                .or_default()
                .extend(created.clone());
            match segments[0] {
                "threads" => HttpResponse::Ok().json(&created[0]),
                _ => HttpResponse::Ok().json(json!({"object": "list", "data": created})),
            }
        }
        ("GET", ["conversations", id, "items"]) | ("GET", ["threads", id, "messages"]) => {
            if !store.has(id) {
                return not_found(id);
            }
            let items = store.children.lock().unwrap().get(*id).cloned().unwrap_or_default();
            HttpResponse::Ok().json(json!({"object": "list", "data": items, "has_more": false}))
        }
        ("POST", ["threads"]) => HttpResponse::Ok().json(store.create(
            "thread",
            json!({"object": "thread", "created_at": 1_700_000_000, "metadata": {}}),
        )),
        ("POST", ["threads", thread_id, "runs"]) => {
            if !store.has(thread_id) {
                return not_found(thread_id);
            }
            let run = json!({
                "object": "thread.run",
                "created_at": 1_700_000_000,
                "thread_id": thread_id,
                "assistant_id": body["assistant_id"],
                "status": "queued",
                "model": "gpt-4o",
                "instructions": "",
                "tools": [],
                "parallel_tool_calls": true,
            });
            HttpResponse::Ok().json(store.create("run", run))
        }
        ("GET", ["threads", thread_id, "runs", run_id]) => match store.get(run_id) {
            Some(run) if run["thread_id"] == json!(thread_id) => {
                store.update(run_id, json!({"status": "completed"}))
            }
            _ => not_found(run_id),
        },
        ("POST", ["fine_tuning", "jobs"]) => {
            let training = body["training_file"].as_str().unwrap_or("").to_owned();
            if !store.has(&training) {
                return invalid(&format!("invalid training_file: {training}"));
            }
            let job = json!({
                "object": "fine_tuning.job",
                "created_at": 1_700_000_000,
                "hyperparameters": {"batch_size": 1, "learning_rate_multiplier": 1.0, "n_epochs": 3},
                "model": body["model"],
                "organization_id": "org-mock",
                "result_files": [],
                "status": "queued",
                "training_file": training,
                "seed": 42,
            });
            HttpResponse::Ok().json(store.create("ftjob", job))
        }
        ("GET", [family]) => {
            let object = object_of(family);
            let mut data: Vec<Value> = store
                .objects
                .lock()
                .unwrap()
                .values()
                .filter(|o| o["object"] == json!(object))
                .cloned()
                .collect();
            data.sort_by_key(|o| o["id"].as_str().unwrap_or("").to_owned());
            HttpResponse::Ok().json(json!({
                "object": "list",
                "data": data,
                "first_id": data.first().map(|o| o["id"].clone()),
                "last_id": data.last().map(|o| o["id"].clone()),
                "has_more": false,
            }))
        }
        ("GET", [_, id]) | ("GET", ["fine_tuning", _, id]) => match store.get(id) {
            Some(object) => HttpResponse::Ok().json(object),
            None => not_found(id),
        },
        ("DELETE", [_, id]) => match store.objects.lock().unwrap().remove(*id) {
            Some(object) => HttpResponse::Ok().json(json!({
                "id": id,
                "object": format!("{}.deleted", object["object"].as_str().unwrap_or("object")),
                "deleted": true,
            })),
            None => not_found(id),
        },
        _ => HttpResponse::NotFound().json(json!({
            "error": {"message": format!("mock: no route for {method} /v1/{path}"), "type": "invalid_request_error", "param": null, "code": null}
        })),
    }
}

impl Store {
    fn new_id(&self, kind: &str) -> String {
        let n = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        format!("{kind}-{}{n}", self.tag)
    }

    fn create(&self, kind: &str, mut object: Value) -> Value {
        let id = self.new_id(kind);
        object["id"] = json!(id);
        self.objects.lock().unwrap().insert(id, object.clone());
        object
    }

    fn has(&self, id: &str) -> bool {
        self.objects.lock().unwrap().contains_key(id)
    }

    fn get(&self, id: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(id).cloned()
    }

    fn update(&self, id: &str, changes: Value) -> HttpResponse {
        let mut objects = self.objects.lock().unwrap();
        let Some(object) = objects.get_mut(id) else {
            return not_found(id);
        };
        for (key, value) in changes.as_object().into_iter().flatten() {
            object[key] = value.clone();
        }
        HttpResponse::Ok().json(object.clone())
    }
}

/// `POST /v1/files`: the multipart body parsed as it streams in; the file hashed, never held
/// whole (its content is kept only when small).
async fn upload_file(request: &HttpRequest, payload: web::Payload, store: &Store) -> HttpResponse {
    use sha2::Digest;
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Ok(boundary) = multer::parse_boundary(content_type) else {
        return invalid("expected multipart/form-data");
    };
    // multer wants a Send stream; actix's payload is not: pump it through a small channel.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let mut payload = payload;
    actix_web::rt::spawn(async move {
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()));
            if sender.send(chunk).await.is_err() {
                break;
            }
        }
    });
    let stream =
        futures_util::stream::unfold(
            receiver,
            |mut r| async move { r.recv().await.map(|c| (c, r)) },
        );
    let mut multipart = multer::Multipart::new(stream, boundary);
    let (mut purpose, mut filename, mut file) = (String::new(), String::new(), None);
    while let Ok(Some(mut field)) = multipart.next_field().await {
        match field.name() {
            Some("purpose") => purpose = field.text().await.unwrap_or_default(),
            Some("file") => {
                filename = field.file_name().unwrap_or("file").to_owned();
                let (mut hasher, mut len, mut kept) = (sha2::Sha256::new(), 0u64, Vec::new());
                while let Ok(Some(chunk)) = field.chunk().await {
                    hasher.update(&chunk);
                    len += chunk.len() as u64;
                    if len <= KEPT_CONTENT {
                        kept.extend_from_slice(&chunk);
                    }
                }
                let sha256 = hasher
                    .finalize()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>();
                file = Some((
                    StoredFile { len, sha256 },
                    (len <= KEPT_CONTENT).then_some(kept),
                ));
            }
            _ => {}
        }
    }
    let Some((stored, kept)) = file else {
        return invalid("missing file");
    };
    let object = store.create(
        "file",
        json!({
            "object": "file",
            "bytes": stored.len,
            "created_at": 1_700_000_000,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }),
    );
    let id = object["id"].as_str().unwrap_or("").to_owned();
    if let Some(kept) = kept {
        store
            .contents
            .lock()
            .unwrap()
            .insert(id.clone(), Bytes::from(kept));
    }
    store.files.lock().unwrap().insert(id, stored);
    HttpResponse::Ok().json(object)
}

async fn read_json(mut payload: web::Payload) -> Value {
    let mut body = Vec::new();
    while let Some(Ok(chunk)) = payload.next().await {
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).unwrap_or(Value::Null)
}

fn object_of(family: &str) -> &'static str {
    match family {
        "files" => "file",
        "batches" => "batch",
        "vector_stores" => "vector_store",
        "conversations" => "conversation",
        "threads" => "thread",
        _ => "unknown",
    }
}

fn not_found(id: &str) -> HttpResponse {
    HttpResponse::NotFound().json(json!({
        "error": {"message": format!("No such object: {id}"), "type": "invalid_request_error", "param": null, "code": null}
    }))
}

fn invalid(message: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({
        "error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}
    }))
}
