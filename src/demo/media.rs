//! The demo's other endpoints: embeddings (deterministic unit vectors, float or base64), image
//! generations (one small PNG), speech (a WAV tone) and transcriptions and translations (fixed text,
//! after reading the whole upload).
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};

use super::settings::MAX_EMBEDDING_DIMENSIONS;
use super::{estimate_tokens, invalid_request, json_body, model_of, unix_now, Settings};

/// The image every generation answers: 64x64, made once with zlib (no encoder in the binary).
pub const DEMO_PNG: &[u8] = include_bytes!("assets/demo.png");

/// What every transcription (and translation) says.
pub const TRANSCRIPT: &str = "Hello from the llmux demo backend. This is a fixed transcript.";

/// POST /v1/embeddings: one vector per input, the same for the same input and dimensions.
pub async fn embeddings(settings: Settings, body: Bytes) -> HttpResponse {
    if let Some(fault) = settings.faults().await {
        return fault;
    }
    let body = match json_body(&body) {
        Ok(body) => body,
        Err(message) => return invalid_request(&message),
    };
    let inputs: Vec<&Value> = match body.get("input") {
        Some(Value::Array(items)) if items.is_empty() => {
            return invalid_request("`input` must not be empty")
        }
        // An array of token ids is one input; an array of strings or of token arrays is many.
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            vec![&body["input"]]
        }
        Some(Value::Array(items)) => items.iter().collect(),
        Some(input @ Value::String(_)) => vec![input],
        _ => return invalid_request("`input` is required: a string or an array"),
    };
    let dimensions = match body.get("dimensions").map(Value::as_u64) {
        None => settings.0.embedding_dimensions,
        Some(Some(asked)) if (1..=MAX_EMBEDDING_DIMENSIONS as u64).contains(&asked) => {
            asked as usize
        }
        Some(_) => return invalid_request("`dimensions` must be an integer from 1 to 8192"),
    };
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let mut prompt_tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let text = input.to_string();
            prompt_tokens += match input {
                Value::Array(tokens) if tokens.iter().all(Value::is_number) => tokens.len() as u64,
                _ => estimate_tokens(text.len()),
            };
            let vector = embedding_of(text.as_bytes(), dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                Value::from(STANDARD.encode(bytes))
            } else {
                Value::from(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "object": "list",
        "data": data,
        "model": model_of(&body),
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    }))
}

/// A unit vector seeded by the input's bytes (FNV-1a), drawn with fastrand's PRNG: stable across
/// runs and versions of llmux that keep this function.
pub fn embedding_of(input: &[u8], dimensions: usize) -> Vec<f32> {
    let seed = input.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = fastrand::Rng::with_seed(seed);
    let raw: Vec<f32> = (0..dimensions).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let norm = raw
        .iter()
        .map(|v| v * v)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    raw.into_iter().map(|v| v / norm).collect()
}

/// POST /v1/images/generations: `n` copies of the demo PNG, as base64 or a URL on the demo server.
pub async fn images(settings: Settings, request: HttpRequest, body: Bytes) -> HttpResponse {
    if let Some(fault) = settings.faults().await {
        return fault;
    }
    let body = match json_body(&body) {
        Ok(body) => body,
        Err(message) => return invalid_request(&message),
    };
    let Some(prompt) = body.get("prompt").and_then(Value::as_str) else {
        return invalid_request("`prompt` is required");
    };
    let count = match body.get("n").map(Value::as_u64) {
        None => 1,
        Some(Some(n @ 1..=10)) => n as usize,
        Some(_) => return invalid_request("`n` must be an integer from 1 to 10"),
    };
    let image = match body.get("response_format").and_then(Value::as_str) {
        Some("b64_json") => {
            json!({"b64_json": STANDARD.encode(DEMO_PNG), "revised_prompt": prompt})
        }
        None | Some("url") => {
            let info = request.connection_info();
            json!({
                "url": format!("{}://{}/images/demo.png", info.scheme(), info.host()),
                "revised_prompt": prompt
            })
        }
        Some(_) => return invalid_request("`response_format` must be `url` or `b64_json`"),
    };
    HttpResponse::Ok().json(json!({"created": unix_now(), "data": vec![image; count]}))
}

/// GET /images/demo.png: where the URLs of generations point.
pub async fn png() -> HttpResponse {
    HttpResponse::Ok().content_type("image/png").body(DEMO_PNG)
}

/// POST /v1/audio/speech: a 440 Hz tone as 16-bit mono WAV, about as long as the input is to read
/// (60 ms a character, from half a second to ten).
pub async fn speech(settings: Settings, body: Bytes) -> HttpResponse {
    if let Some(fault) = settings.faults().await {
        return fault;
    }
    let body = match json_body(&body) {
        Ok(body) => body,
        Err(message) => return invalid_request(&message),
    };
    let Some(input) = body.get("input").and_then(Value::as_str) else {
        return invalid_request("`input` is required");
    };
    let seconds = (input.chars().count() as f64 * 0.06).clamp(0.5, 10.0);
    HttpResponse::Ok()
        .content_type("audio/wav")
        .body(wav_tone(seconds, 440.0))
}

/// The sample rate of the demo's audio: OpenAI's PCM output rate.
const SAMPLE_RATE: u32 = 24_000;

/// A sine tone as a canonical 44-byte-header PCM WAV file (hand-written: the format is a fixed
/// header and the samples, not worth a crate).
pub fn wav_tone(seconds: f64, frequency: f64) -> Vec<u8> {
    let samples = (seconds * f64::from(SAMPLE_RATE)) as u32;
    let data_bytes = samples * 2;
    let mut wav = Vec::with_capacity(44 + data_bytes as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_bytes).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    wav.extend_from_slice(&(SAMPLE_RATE * 2).to_le_bytes()); // bytes per second
    wav.extend_from_slice(&2u16.to_le_bytes()); // block align
    wav.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_bytes.to_le_bytes());
    for index in 0..samples {
        let time = f64::from(index) / f64::from(SAMPLE_RATE);
        let sample = (time * frequency * std::f64::consts::TAU).sin() * 0.3 * f64::from(i16::MAX);
        wav.extend_from_slice(&(sample as i16).to_le_bytes());
    }
    wav
}

/// Which audio endpoint a multipart upload came to.
#[derive(Debug, Clone, Copy)]
pub enum Task {
    Transcribe,
    Translate,
}

/// POST /v1/audio/transcriptions and /v1/audio/translations: reads every part of the upload, then
/// answers the fixed transcript in the asked `response_format`.
pub async fn transcribe(
    task: Task,
    request: HttpRequest,
    body: Bytes,
    settings: Settings,
) -> HttpResponse {
    let boundary = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| multer::parse_boundary(value).ok());
    let Some(boundary) = boundary else {
        return invalid_request("the body must be multipart/form-data with a boundary");
    };
    // multer wants a `Send` stream and actix's payload is not: the upload is read whole first
    // (llmux bounds its size), then parsed.
    let whole = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut multipart = multer::Multipart::new(whole, boundary);
    let mut response_format = String::from("json");
    let mut file_bytes = 0usize;
    loop {
        match multipart.next_field().await {
            Ok(Some(mut field)) => {
                let name = field.name().unwrap_or_default().to_owned();
                let mut value = Vec::new();
                loop {
                    match field.chunk().await {
                        Ok(Some(chunk)) => {
                            if name == "file" {
                                file_bytes += chunk.len();
                            } else if value.len() < 1024 {
                                value.extend_from_slice(&chunk);
                            }
                        }
                        Ok(None) => break,
                        Err(cause) => {
                            return invalid_request(&format!("unreadable upload: {cause}"))
                        }
                    }
                }
                if name == "response_format" {
                    response_format = String::from_utf8_lossy(&value).trim().to_owned();
                }
            }
            Ok(None) => break,
            Err(cause) => return invalid_request(&format!("unreadable upload: {cause}")),
        }
    }
    if file_bytes == 0 {
        return invalid_request("the upload has no `file`, or it is empty");
    }
    // Faults after the upload was read, as a real backend fails after receiving it.
    if let Some(fault) = settings.faults().await {
        return fault;
    }
    let duration: f64 = 3.5;
    let segment = json!({
        "id": 0, "seek": 0, "start": 0.0, "end": duration, "text": TRANSCRIPT,
        "tokens": [], "temperature": 0.0, "avg_logprob": -0.1,
        "compression_ratio": 1.0, "no_speech_prob": 0.01
    });
    let language = match task {
        Task::Transcribe => "english",
        Task::Translate => "english",
    };
    match response_format.as_str() {
        "text" => HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(format!("{TRANSCRIPT}\n")),
        "srt" => HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(format!(
                "1\n00:00:00,000 --> 00:00:03,500\n{TRANSCRIPT}\n\n"
            )),
        "vtt" => HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(format!(
                "WEBVTT\n\n00:00:00.000 --> 00:00:03.500\n{TRANSCRIPT}\n\n"
            )),
        "verbose_json" => HttpResponse::Ok().json(json!({
            "task": match task { Task::Transcribe => "transcribe", Task::Translate => "translate" },
            "language": language,
            "duration": duration,
            "text": TRANSCRIPT,
            "segments": [segment]
        })),
        _ => HttpResponse::Ok().json(json!({
            "text": TRANSCRIPT,
            "usage": {"type": "duration", "seconds": duration.ceil() as u64}
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_are_unit_vectors_that_depend_only_on_the_input() {
        let a = embedding_of(b"\"hello\"", 16);
        assert_eq!(a.len(), 16);
        assert_eq!(a, embedding_of(b"\"hello\"", 16));
        assert_ne!(a, embedding_of(b"\"hellp\"", 16));
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }

    #[test]
    fn the_wav_header_describes_its_samples() {
        let wav = wav_tone(0.5, 440.0);
        assert_eq!(&wav[0..4], b"RIFF");
        assert_eq!(&wav[8..16], b"WAVEfmt ");
        let data_bytes = u32::from_le_bytes([wav[40], wav[41], wav[42], wav[43]]);
        assert_eq!(data_bytes as usize, wav.len() - 44);
        assert_eq!(data_bytes, 12_000 * 2);
    }

    #[test]
    fn the_demo_png_is_a_png() {
        assert_eq!(&DEMO_PNG[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&DEMO_PNG[12..16], b"IHDR");
        assert_eq!(&DEMO_PNG[DEMO_PNG.len() - 8..DEMO_PNG.len() - 4], b"IEND");
    }
}
