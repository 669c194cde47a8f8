//! The image-data cache and its URLs: images llmux serves under
//! `{base_url}/v1/images/data/{model}/{id}`, bounded by total bytes and a TTL, evicted least
//! recently used first.
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;

/// The path under which cached images are served, without its leading slash.
pub const IMAGE_DATA_PATH: &str = "v1/images/data";

/// An image as served: its bytes, what they are, and a validator.
#[derive(Debug, Clone)]
pub struct CachedImage {
    pub bytes: Bytes,
    pub content_type: &'static str,
    /// A strong ETag, quoted.
    pub etag: String,
    /// Time left before the entry expires, for Cache-Control.
    pub max_age: Duration,
}

pub struct ImageCache {
    max_bytes: u64,
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// `model \0 id` -> entry.
    entries: HashMap<String, Entry>,
    /// Last use tick -> key: the first key is the least recently used.
    by_use: BTreeMap<u64, String>,
    tick: u64,
    bytes: u64,
}

struct Entry {
    image: CachedImage,
    expires: Instant,
    used: u64,
}

impl ImageCache {
    pub fn new(max_bytes: u64, ttl: Duration) -> Self {
        Self {
            max_bytes,
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Stores a new image for `model` under a fresh unguessable id and returns the id, or `None`
    /// when the image alone is larger than the whole cache.
    pub fn insert_new(&self, model: &str, bytes: Bytes) -> Option<String> {
        let id = new_id();
        self.insert(model, &id, bytes).then_some(id)
    }

    /// Stores `bytes` as image `id` of `model`, evicting expired then least recently used
    /// images to make room. Returns false when the image alone is larger than the cache.
    pub fn insert(&self, model: &str, id: &str, bytes: Bytes) -> bool {
        let size = bytes.len() as u64;
        if size > self.max_bytes {
            return false;
        }
        let image = CachedImage {
            content_type: sniff_content_type(&bytes),
            etag: format!("\"{}\"", new_id()),
            max_age: self.ttl,
            bytes,
        };
        let now = Instant::now();
        let mut inner = self.lock();
        inner.remove(&key(model, id));
        inner.remove_expired(now);
        while inner.bytes + size > self.max_bytes {
            let Some((_, oldest)) = inner.by_use.pop_first() else {
                break;
            };
            inner.remove(&oldest);
        }
        inner.tick += 1;
        let used = inner.tick;
        inner.by_use.insert(used, key(model, id));
        inner.bytes += size;
        inner.entries.insert(
            key(model, id),
            Entry {
                image,
                expires: now + self.ttl,
                used,
            },
        );
        true
    }

    /// The image `id` of `model`, if it is still there; a hit counts as a use.
    pub fn get(&self, model: &str, id: &str) -> Option<CachedImage> {
        let now = Instant::now();
        let key = key(model, id);
        let mut inner = self.lock();
        let expired = inner.entries.get(&key).map(|entry| entry.expires <= now)?;
        if expired {
            inner.remove(&key);
            return None;
        }
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.entries.get_mut(&key)?;
        let previous = std::mem::replace(&mut entry.used, tick);
        let mut image = entry.image.clone();
        image.max_age = entry.expires.saturating_duration_since(now);
        inner.by_use.remove(&previous);
        inner.by_use.insert(tick, key);
        Some(image)
    }

    /// The most bytes the cache holds.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Total bytes of the images held.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data: every update is a few map ops.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    fn remove(&mut self, key: &str) {
        if let Some(entry) = self.entries.remove(key) {
            self.by_use.remove(&entry.used);
            self.bytes -= entry.image.bytes.len() as u64;
        }
    }

    fn remove_expired(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.expires <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            self.remove(&key);
        }
    }
}

fn key(model: &str, id: &str) -> String {
    format!("{model}\0{id}")
}

/// 128 random bits from the operating system, URL-safe base64 (22 characters).
pub fn new_id() -> String {
    let mut bits = [0u8; 16];
    if getrandom::getrandom(&mut bits).is_err() {
        // No OS randomness at all: still unique, less unguessable; never expected on Linux.
        bits = (u128::from(fastrand::u64(..)) << 64 | u128::from(fastrand::u64(..))).to_le_bytes();
    }
    URL_SAFE_NO_PAD.encode(bits)
}

/// The Content-Type of image bytes from their magic number.
pub fn sniff_content_type(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if bytes.starts_with(b"\xff\xd8\xff") {
        "image/jpeg"
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        "image/gif"
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "image/webp"
    } else {
        "application/octet-stream"
    }
}

/// The URL under which image `id` of `model` is served.
pub fn image_url(base_url: &str, model: &str, id: &str) -> String {
    format!("{base_url}/{IMAGE_DATA_PATH}/{model}/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\nrest";

    #[test]
    fn content_types_come_from_the_magic_bytes() {
        for (bytes, expected) in [
            (PNG, "image/png"),
            (&b"\xff\xd8\xff\xe0xx"[..], "image/jpeg"),
            (&b"GIF89a..."[..], "image/gif"),
            (&b"RIFF\0\0\0\0WEBPVP8 "[..], "image/webp"),
            (&b"hello"[..], "application/octet-stream"),
        ] {
            assert_eq!(sniff_content_type(bytes), expected);
        }
    }

    #[test]
    fn ids_are_22_url_safe_characters_and_differ() {
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 22);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
    }

    #[test]
    fn an_image_is_only_served_under_its_model() {
        let cache = ImageCache::new(1024, Duration::from_secs(60));
        let id = cache.insert_new("m", Bytes::from_static(PNG)).unwrap();
        let image = cache.get("m", &id).unwrap();
        assert_eq!(image.bytes, PNG);
        assert_eq!(image.content_type, "image/png");
        assert!(cache.get("other", &id).is_none());
    }

    #[test]
    fn the_least_recently_used_image_is_evicted_first() {
        let cache = ImageCache::new(30, Duration::from_secs(60));
        let a = cache.insert_new("m", Bytes::from(vec![1; 10])).unwrap();
        let b = cache.insert_new("m", Bytes::from(vec![2; 10])).unwrap();
        let c = cache.insert_new("m", Bytes::from(vec![3; 10])).unwrap();
        assert!(cache.get("m", &a).is_some());
        let d = cache.insert_new("m", Bytes::from(vec![4; 10])).unwrap();
        assert!(
            cache.get("m", &b).is_none(),
            "b was the least recently used"
        );
        for id in [&a, &c, &d] {
            assert!(cache.get("m", id).is_some());
        }
        assert_eq!(cache.bytes(), 30);
        assert!(cache.insert_new("m", Bytes::from(vec![5; 31])).is_none());
    }

    #[test]
    fn images_expire_after_the_ttl() {
        let cache = ImageCache::new(1024, Duration::from_millis(50));
        let id = cache.insert_new("m", Bytes::from_static(PNG)).unwrap();
        assert!(cache.get("m", &id).is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(cache.get("m", &id).is_none());
        assert_eq!(cache.bytes(), 0);
    }
}
