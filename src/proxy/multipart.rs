//! Multipart uploads: the client's body is parsed as it streams in (multer), `model` is found and
//! routed on, and the upstream gets a new multipart body in which only `model` (and, for
//! `upstream_image_format: b64_json` endpoints, `response_format`) differs. File parts stream
//! through as they arrive; parts before `model` are spooled (memory, then a temp file) until the
//! route is known.
use std::cell::RefCell;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use multer::{Constraints, Field, Multipart, SizeLimit};
use tokio::sync::{mpsc, oneshot};

use crate::errors::ApiError;
use crate::images::new_id;
use crate::proxy::rewrite::dropped;
use crate::routing::endpoint::{Endpoint, UpstreamImageFormat};

/// Bytes of parts before `model` kept in memory before the spool moves to a temp file.
pub const SPOOL_MEMORY_BYTES: usize = 1024 * 1024;
/// Chunks buffered between the client, the parser and the upstream: memory stays bounded by a
/// few of the client's chunks whatever the upload's size.
const CHANNEL_CHUNKS: usize = 8;
/// Largest `model` or `response_format` value.
const MAX_TEXT_FIELD: usize = 4096;
/// Read size when replaying a spool file.
const REPLAY_CHUNK: usize = 256 * 1024;
/// Most parts an upload may have: each part before `model` costs bookkeeping until the route is
/// known (issue 20: 1M tiny parts cost +143 MB and 86 s). OpenAI's uploads have a few dozen.
pub const MAX_PARTS: usize = 1000;
/// Longest part name kept for `drop_params` while spooling (longer names are refused).
const MAX_PART_NAME: usize = 256;

/// An upload whose `model` has been read; the rest of the client's body is still streaming in.
pub struct Upload {
    pub model: String,
    multipart: Multipart<'static>,
    boundary: String,
    spool: Spool,
    limit: u64,
    /// Parts read so far, bounded by `MAX_PARTS`.
    parts: usize,
}

/// The body of the upstream request.
pub struct UpstreamBody {
    /// `multipart/form-data` with llmux's own boundary.
    pub content_type: HeaderValue,
    pub stream: Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>>>>,
    pub outcome: Rc<RefCell<UploadOutcome>>,
    /// Resolves once the whole body was handed to the upstream connection, or with
    /// `UpstreamStalled` when the upstream stopped reading it.
    pub sent: oneshot::Receiver<Result<(), UpstreamStalled>>,
}

/// The upstream read nothing of the body for its `request_timeout` (issue 20: an upstream that
/// accepts and never reads hung the upload past every bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamStalled;

/// What the body producer learned, read by the handler once the upstream answered.
#[derive(Default)]
pub struct UploadOutcome {
    /// Why the client's body could not be passed on (the upstream then saw a broken body).
    pub failure: Option<ApiError>,
    /// The client's own `response_format`, when it sent one.
    pub response_format: Option<String>,
}

impl Upload {
    /// Checks the headers and reads the client's body up to and including the `model` field.
    pub async fn start(
        request: &HttpRequest,
        payload: web::Payload,
        limit: u64,
        idle_timeout: Duration,
        spool_dir: &Path,
    ) -> Result<Self, ApiError> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let boundary = multer::parse_boundary(content_type).map_err(|error| {
            ApiError::invalid_request(
                format!(
                    "This endpoint takes a multipart/form-data body with a boundary ({error})."
                ),
                None,
            )
        })?;
        let announced = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|length| length > limit) {
            return Err(too_large(limit));
        }
        let constraints = Constraints::new().size_limit(SizeLimit::new().whole_stream(limit));
        let multipart =
            Multipart::with_constraints(pump(payload, idle_timeout), boundary, constraints);
        let mut upload = Self {
            model: String::new(),
            multipart,
            boundary: format!("llmux-{}", new_id()),
            spool: Spool::new(spool_dir),
            limit,
            parts: 0,
        };
        loop {
            let Some(mut field) = upload.next_field().await? else {
                return Err(ApiError::invalid_request(
                    "The multipart body has no `model` field.",
                    Some("model"),
                ));
            };
            match field.name() {
                Some("model") => {
                    upload.model = read_text(field, limit).await?;
                    return Ok(upload);
                }
                Some("response_format") if field.file_name().is_none() => {
                    let head = field_head(&upload.boundary, &field);
                    let value = read_text(field, limit).await?;
                    upload
                        .spool
                        .items
                        .push(Item::ResponseFormat { head, value });
                }
                name => {
                    if name.is_some_and(|name| name.len() > MAX_PART_NAME) {
                        return Err(ApiError::invalid_request(
                            format!("A part name is longer than {MAX_PART_NAME} bytes."),
                            None,
                        ));
                    }
                    upload.spool.start_field(name);
                    upload
                        .spool
                        .write(field_head(&upload.boundary, &field))
                        .await?;
                    while let Some(chunk) =
                        field.chunk().await.map_err(|e| client_error(e, limit))?
                    {
                        upload.spool.write(chunk).await?;
                    }
                    upload.spool.write(Bytes::from_static(b"\r\n")).await?;
                }
            }
        }
    }

    /// The upstream body, produced by a task on this worker as the client's body streams in.
    /// `model` becomes the endpoint's target name (unless its `model_field` is false), fields its
    /// `drop_params` names are left out, and `response_format` follows `upstream_image_format`.
    pub fn into_body(self, endpoint: &Arc<Endpoint>) -> UpstreamBody {
        let target_model = match endpoint.model_field {
            true => endpoint.target_model_name.to_string(),
            false => self.model.clone(),
        };
        let image_format = endpoint.upstream_image_format;
        let content_type =
            HeaderValue::from_str(&format!("multipart/form-data; boundary={}", self.boundary))
                .unwrap_or_else(|_| HeaderValue::from_static("multipart/form-data"));
        let outcome = Rc::new(RefCell::new(UploadOutcome::default()));
        let (sender, receiver) = mpsc::channel(CHANNEL_CHUNKS);
        let (sent, sent_receiver) = oneshot::channel();
        let producer_outcome = Rc::clone(&outcome);
        let endpoint = Arc::clone(endpoint);
        actix_web::rt::spawn(async move {
            let mut body = Producer {
                sender: sender.clone(),
                outcome: producer_outcome,
                image_format,
                endpoint,
            };
            match body.produce(self, &target_model).await {
                Ok(()) => {
                    let _ = sent.send(Ok(()));
                }
                Err(Stop::Stalled) => {
                    let _ = sent.send(Err(UpstreamStalled));
                }
                Err(Stop::Client(error)) => {
                    let message = error.to_string();
                    body.outcome.borrow_mut().failure = Some(error);
                    let _ = sender.send(Err(std::io::Error::other(message))).await;
                }
                Err(Stop::Closed) => {}
            }
        });
        UpstreamBody {
            content_type,
            stream: Box::pin(receive(receiver)),
            outcome,
            sent: sent_receiver,
        }
    }

    async fn next_field(&mut self) -> Result<Option<Field<'static>>, ApiError> {
        let limit = self.limit;
        let field = self
            .multipart
            .next_field()
            .await
            .map_err(|e| client_error(e, limit))?;
        if field.is_some() {
            self.parts += 1;
            if self.parts > MAX_PARTS {
                return Err(ApiError::invalid_request(
                    format!("The multipart body has more than {MAX_PARTS} parts."),
                    None,
                ));
            }
        }
        Ok(field)
    }
}

enum Stop {
    /// The client's body is broken or too large.
    Client(ApiError),
    /// The upstream request went away; nothing more to send.
    Closed,
    /// The upstream took nothing for `request_timeout`.
    Stalled,
}

impl From<ApiError> for Stop {
    fn from(error: ApiError) -> Self {
        Self::Client(error)
    }
}

struct Producer {
    sender: mpsc::Sender<Result<Bytes, std::io::Error>>,
    outcome: Rc<RefCell<UploadOutcome>>,
    image_format: UpstreamImageFormat,
    endpoint: Arc<Endpoint>,
}

impl Producer {
    async fn produce(&mut self, mut upload: Upload, target_model: &str) -> Result<(), Stop> {
        let mut format_sent = false;
        let items = std::mem::take(&mut upload.spool.items);
        let mut file = upload.spool.file.take();
        if let Some(spooled) = file.as_mut() {
            spooled
                .seek(SeekFrom::Start(0))
                .map_err(|e| ApiError::Internal(format!("cannot rewind the spool file: {e}")))?;
        }
        let mut memory = std::mem::take(&mut upload.spool.memory).freeze();
        for item in items {
            match item {
                Item::Raw { mut length, name } => {
                    let keep = !name.is_some_and(|name| dropped(&self.endpoint, &name));
                    while length > 0 {
                        let chunk = match file.take() {
                            None => memory.split_to((length as usize).min(memory.len())),
                            Some(spooled) => {
                                let (spooled, chunk) = read_chunk(spooled, length).await?;
                                file = Some(spooled);
                                chunk
                            }
                        };
                        if chunk.is_empty() {
                            return Err(
                                ApiError::Internal("the upload spool is short".into()).into()
                            );
                        }
                        length -= chunk.len() as u64;
                        if keep {
                            self.send(chunk).await?;
                        }
                    }
                }
                Item::ResponseFormat { head, value } => {
                    format_sent = true;
                    self.send_response_format(head, value).await?;
                }
            }
        }
        drop(file);
        let head = part_head_for(&upload.boundary, "model");
        self.send(head).await?;
        self.send(Bytes::from(format!("{target_model}\r\n")))
            .await?;
        while let Some(mut field) = upload.next_field().await? {
            let head = field_head(&upload.boundary, &field);
            if field.name() == Some("model") {
                // A repeated `model` names the same route: it never reaches the upstream as sent.
                read_text(field, upload.limit).await?;
                self.send(head).await?;
                self.send(Bytes::from(format!("{target_model}\r\n")))
                    .await?;
                continue;
            }
            if field.name() == Some("response_format") && field.file_name().is_none() {
                format_sent = true;
                let value = read_text(field, upload.limit).await?;
                self.send_response_format(head, value).await?;
                continue;
            }
            let keep = !field
                .name()
                .is_some_and(|name| dropped(&self.endpoint, name));
            if keep {
                self.send(head).await?;
            }
            while let Some(chunk) = field
                .chunk()
                .await
                .map_err(|e| client_error(e, upload.limit))?
            {
                if keep {
                    self.send(chunk).await?;
                }
            }
            if keep {
                self.send(Bytes::from_static(b"\r\n")).await?;
            }
        }
        if !format_sent && self.image_format == UpstreamImageFormat::B64Json {
            self.send(part_head_for(&upload.boundary, "response_format"))
                .await?;
            self.send(Bytes::from_static(b"b64_json\r\n")).await?;
        }
        self.send(Bytes::from(format!("--{}--\r\n", upload.boundary)))
            .await
    }

    async fn send_response_format(&mut self, head: Bytes, value: String) -> Result<(), Stop> {
        let sent = match self.image_format {
            UpstreamImageFormat::B64Json => "b64_json".to_owned(),
            UpstreamImageFormat::AsRequested => value.clone(),
        };
        self.outcome.borrow_mut().response_format = Some(value);
        self.send(head).await?;
        self.send(Bytes::from(format!("{sent}\r\n"))).await
    }

    /// Hands `chunk` to the upstream connection. The channel is full only while the upstream
    /// does not read: waiting longer than the endpoint's `request_timeout` for room stops the
    /// upload.
    async fn send(&mut self, chunk: Bytes) -> Result<(), Stop> {
        let timeout = self.endpoint.request_timeout;
        match tokio::time::timeout(timeout, self.sender.send(Ok(chunk))).await {
            Ok(sent) => sent.map_err(|_| Stop::Closed),
            Err(_) => Err(Stop::Stalled),
        }
    }
}

/// Parts before `model`, in the order they came: rendered bytes (in memory, then in a temp file
/// in `--spool-dir` that is deleted when closed) and `response_format` values kept apart so they
/// can be rewritten.
struct Spool {
    items: Vec<Item>,
    memory: BytesMut,
    file: Option<File>,
    dir: PathBuf,
}

enum Item {
    /// One field's rendered bytes (head, content, CRLF), with the field's name.
    Raw {
        length: u64,
        name: Option<String>,
    },
    ResponseFormat {
        head: Bytes,
        value: String,
    },
}

impl Spool {
    fn new(dir: &Path) -> Self {
        Self {
            items: Vec::new(),
            memory: BytesMut::new(),
            file: None,
            dir: dir.to_owned(),
        }
    }

    /// Starts a field: what `write` adds until the next one belongs to it.
    fn start_field(&mut self, name: Option<&str>) {
        self.items.push(Item::Raw {
            length: 0,
            name: name.map(str::to_owned),
        });
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), ApiError> {
        match self.items.last_mut() {
            Some(Item::Raw { length, .. }) => *length += chunk.len() as u64,
            _ => self.items.push(Item::Raw {
                length: chunk.len() as u64,
                name: None,
            }),
        }
        if self.file.is_none() && self.memory.len() + chunk.len() <= SPOOL_MEMORY_BYTES {
            self.memory.extend_from_slice(&chunk);
            return Ok(());
        }
        let file = match self.file.take() {
            Some(file) => file,
            None => {
                // Anonymous: the OS removes it when the last handle closes, whatever happens.
                let file = tempfile::tempfile_in(&self.dir)
                    .map_err(|error| spool_failed(&self.dir, "create", &error))?;
                let memory = std::mem::take(&mut self.memory).freeze();
                write_chunk(file, memory, &self.dir).await?
            }
        };
        self.file = Some(write_chunk(file, chunk, &self.dir).await?);
        Ok(())
    }
}

/// A spool file that cannot be made or written is the operator's to fix, not the client's: an
/// error line says what to do (issue 20: a read-only `/tmp` was only an access-log line); the
/// client gets a 500 without the path.
fn spool_failed(dir: &Path, doing: &str, error: &std::io::Error) -> ApiError {
    tracing::error!(
        spool_dir = %dir.display(),
        %error,
        "cannot {doing} an upload spool file: make --spool-dir (LLMUX_SPOOL_DIR) a writable directory with free space (in Kubernetes, an emptyDir volume); uploads whose file part comes before `model` fail until then"
    );
    ApiError::Internal(
        "This server could not store the upload's parts before `model` (its log says why). Sending `model` first avoids storing them.".into(),
    )
}

async fn write_chunk(file: File, chunk: Bytes, dir: &Path) -> Result<File, ApiError> {
    web::block(move || {
        let mut file = file;
        file.write_all(&chunk).map(|()| file)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|error| spool_failed(dir, "write", &error))
}

/// Reads up to `length` bytes (at most one replay chunk) from the spool file.
async fn read_chunk(file: File, length: u64) -> Result<(File, Bytes), ApiError> {
    web::block(move || {
        let mut file = file;
        let mut buffer = vec![0; (length as usize).min(REPLAY_CHUNK)];
        let read = file.read(&mut buffer)?;
        buffer.truncate(read);
        Ok::<_, std::io::Error>((file, Bytes::from(buffer)))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(format!("cannot read the spool file: {e}")))
}

/// Feeds the client's body to multer (which needs a `Send` stream, actix's payload is not) through
/// a bounded channel: backpressure reaches the client's socket.
/// A client silent for `idle_timeout` mid-body fails the upload.
fn pump(
    mut payload: web::Payload,
    idle_timeout: Duration,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let (sender, receiver) = mpsc::channel(CHANNEL_CHUNKS);
    actix_web::rt::spawn(async move {
        loop {
            let chunk = match tokio::time::timeout(idle_timeout, payload.next()).await {
                Ok(None) => break,
                Ok(Some(chunk)) => chunk.map_err(|e| std::io::Error::other(e.to_string())),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    ClientSilent(idle_timeout),
                )),
            };
            let failed = chunk.is_err();
            if sender.send(chunk).await.is_err() || failed {
                break;
            }
        }
    });
    receive(receiver)
}

/// The pump's error when the client went silent: `client_error` makes it a 408.
#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing for {}s", .0.as_secs_f64())]
struct ClientSilent(Duration);

fn receive<T: Send + 'static>(
    receiver: mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

/// Reads a small text field (`model`, `response_format`), refusing long ones.
async fn read_text(mut field: Field<'static>, limit: u64) -> Result<String, ApiError> {
    let name = field.name().unwrap_or("").to_owned();
    let mut value = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| client_error(e, limit))? {
        value.extend_from_slice(&chunk);
        if value.len() > MAX_TEXT_FIELD {
            return Err(ApiError::invalid_request(
                format!("The `{name}` field is longer than {MAX_TEXT_FIELD} bytes."),
                None,
            ));
        }
    }
    String::from_utf8(value).map_err(|_| {
        ApiError::invalid_request(format!("The `{name}` field is not UTF-8 text."), None)
    })
}

/// The boundary line and headers of a part, as the client sent them (names capitalized).
fn field_head(boundary: &str, field: &Field<'static>) -> Bytes {
    part_head(
        boundary,
        field
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes())),
    )
}

fn part_head<'a>(boundary: &str, headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Bytes {
    let mut head = BytesMut::with_capacity(256);
    head.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    for (name, value) in headers {
        head.extend_from_slice(capitalize(name).as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head.freeze()
}

/// The head of a plain text field llmux writes itself.
fn part_head_for(boundary: &str, name: &str) -> Bytes {
    Bytes::from(format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
    ))
}

/// `content-disposition` -> `Content-Disposition`: header names are case-insensitive, but some
/// multipart parsers are not.
fn capitalize(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let c = if upper { c.to_ascii_uppercase() } else { c };
            upper = c == '-';
            c
        })
        .collect()
}

fn too_large(limit: u64) -> ApiError {
    ApiError::PayloadTooLarge {
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
    }
}

fn client_error(error: multer::Error, limit: u64) -> ApiError {
    match error {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            too_large(limit)
        }
        multer::Error::StreamReadFailed(error) => {
            let silent = error
                .downcast_ref::<std::io::Error>()
                .and_then(|error| error.get_ref())
                .and_then(|inner| inner.downcast_ref::<ClientSilent>());
            match silent {
                Some(ClientSilent(timeout)) => ApiError::ClientBodyTimeout { timeout: *timeout },
                None => ApiError::BadPayload(error.to_string()),
            }
        }
        other => {
            ApiError::invalid_request(format!("The multipart body is malformed: {other}."), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_headers_are_written_back_capitalized() {
        let headers = [
            (
                "content-disposition",
                &b"form-data; name=\"file\"; filename=\"a b.wav\""[..],
            ),
            ("content-type", &b"audio/wav"[..]),
        ];
        let head = part_head("B", headers);
        let text = std::str::from_utf8(&head).unwrap();
        assert!(text.starts_with("--B\r\n"));
        assert!(text
            .contains("Content-Disposition: form-data; name=\"file\"; filename=\"a b.wav\"\r\n"));
        assert!(text.contains("Content-Type: audio/wav\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    mod properties {
        use super::*;
        use crate::routing::endpoint::tests::endpoint;
        use actix_web::FromRequest;
        use proptest::prelude::*;

        const BOUNDARY: &str = "prop-boundary-5f3a9c2e1b7d4086";

        /// (name, file name, content) of each part, `model` included.
        type Parts = Vec<(String, Option<String>, Vec<u8>)>;

        fn render(parts: &Parts) -> Vec<u8> {
            let mut body = Vec::new();
            for (name, file_name, content) in parts {
                body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
                let disposition = match file_name {
                    Some(file) => format!("form-data; name=\"{name}\"; filename=\"{file}\""),
                    None => format!("form-data; name=\"{name}\""),
                };
                body.extend_from_slice(
                    format!("Content-Disposition: {disposition}\r\n\r\n").as_bytes(),
                );
                body.extend_from_slice(content);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
            body
        }

        /// Runs the rewriter on `chunks` and parses what the upstream would get.
        fn rewrite(chunks: Vec<Bytes>) -> Result<Parts, String> {
            actix_web::rt::System::new().block_on(async move {
                let (request, _) = actix_web::test::TestRequest::default()
                    .insert_header((
                        header::CONTENT_TYPE,
                        format!("multipart/form-data; boundary={BOUNDARY}"),
                    ))
                    .to_http_parts();
                let stream = futures_util::stream::iter(
                    chunks
                        .into_iter()
                        .map(Ok::<_, actix_web::error::PayloadError>),
                );
                let boxed: actix_http::BoxedPayloadStream = Box::pin(stream);
                let mut payload = actix_web::dev::Payload::from(boxed);
                let payload = web::Payload::from_request(&request, &mut payload)
                    .await
                    .map_err(|e| e.to_string())?;
                let upload = Upload::start(
                    &request,
                    payload,
                    1 << 24,
                    Duration::from_secs(5),
                    &std::env::temp_dir(),
                )
                .await
                .map_err(|e| e.to_string())?;
                let endpoint = Arc::new(endpoint(
                    "f.json",
                    "m",
                    "v1/audio/transcriptions",
                    "target-m",
                ));
                let body = upload.into_body(&endpoint);
                let boundary = body
                    .content_type
                    .to_str()
                    .ok()
                    .and_then(|v| multer::parse_boundary(v).ok())
                    .ok_or("no boundary")?;
                let sent: Vec<Result<Bytes, std::io::Error>> = body.stream.collect().await;
                let mut parsed = Multipart::new(futures_util::stream::iter(sent), boundary);
                let mut parts = Vec::new();
                while let Some(field) = parsed.next_field().await.map_err(|e| e.to_string())? {
                    let name = field.name().unwrap_or("").to_owned();
                    let file_name = field.file_name().map(str::to_owned);
                    let content = field.bytes().await.map_err(|e| e.to_string())?;
                    parts.push((name, file_name, content.to_vec()));
                }
                Ok(parts)
            })
        }

        fn parts() -> impl Strategy<Value = Parts> {
            let part = (
                prop::sample::select(vec![
                    "file",
                    "prompt",
                    "language",
                    "timestamp_granularities[]",
                ]),
                prop::option::of("[a-z]{1,8}\\.wav"),
                prop::collection::vec(any::<u8>(), 0..3000),
            )
                .prop_map(|(name, file, content)| (name.to_owned(), file, content));
            (
                prop::collection::vec(part, 0..4),
                any::<prop::sample::Index>(),
            )
                .prop_map(|(mut parts, at)| {
                    let at = at.index(parts.len() + 1);
                    parts.insert(at, ("model".into(), None, b"m".to_vec()));
                    parts
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

            /// Issue 20: every part reaches the upstream as sent (only `model` becomes the
            /// target), however the client's body is split into chunks.
            #[test]
            fn parts_survive_any_split_of_the_input(
                parts in parts(),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            ) {
                let body = render(&parts);
                let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
                cuts.sort_unstable();
                let mut chunks = Vec::new();
                let mut from = 0;
                for cut in cuts {
                    chunks.push(Bytes::copy_from_slice(&body[from..cut]));
                    from = cut;
                }
                chunks.push(Bytes::copy_from_slice(&body[from..]));
                let received = rewrite(chunks).map_err(TestCaseError::fail)?;
                let expected: Parts = parts
                    .into_iter()
                    .map(|(name, file, content)| match name.as_str() {
                        "model" => (name, file, b"target-m".to_vec()),
                        _ => (name, file, content),
                    })
                    .collect();
                prop_assert_eq!(received, expected);
            }
        }
    }
}
