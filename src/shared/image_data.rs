//! Image data llmux serves under `/v1/images/data/{model}/{id}`, for images that exist nowhere
//! else (base64 answers llmux turned into URLs): in this replica's memory, or with Redis in
//! every replica's, bounded in bytes with a TTL either way.
//!
//! Images an upstream serves by URL need no shared state: the URL names the model and the
//! upstream's id, so any replica fetches it from the model's `v1/images/data` endpoint and keeps
//! it in its own memory ([`ImageStore::keep_local`]). Only bytes llmux alone holds go to Redis.
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::connection::{Redis, SharedStateError};
use crate::images::{new_id, sniff_content_type, CachedImage, ImageCache};
use crate::routing::responses::is_plain_id;

pub trait ImageStore: Send + Sync {
    /// Stores a new image of `model` under a fresh unguessable id and returns the id; `None` when
    /// the image alone is larger than the store.
    fn insert_new<'a>(&'a self, model: &'a str, bytes: Bytes) -> BoxFuture<'a, Option<String>>;

    /// The image `id` of `model`, if it is still there.
    fn get<'a>(&'a self, model: &'a str, id: &'a str) -> BoxFuture<'a, Option<CachedImage>>;

    /// Keeps an image fetched from an upstream in this replica's memory only: any replica can
    /// fetch it again.
    fn keep_local(&self, model: &str, id: &str, bytes: Bytes) -> bool;

    /// This replica's memory (for its size gauge and the largest image it takes).
    fn local(&self) -> &ImageCache;
}

impl ImageStore for ImageCache {
    fn insert_new<'a>(&'a self, model: &'a str, bytes: Bytes) -> BoxFuture<'a, Option<String>> {
        Box::pin(std::future::ready(ImageCache::insert_new(
            self, model, bytes,
        )))
    }

    fn get<'a>(&'a self, model: &'a str, id: &'a str) -> BoxFuture<'a, Option<CachedImage>> {
        Box::pin(std::future::ready(ImageCache::get(self, model, id)))
    }

    fn keep_local(&self, model: &str, id: &str, bytes: Bytes) -> bool {
        self.insert(model, id, bytes)
    }

    fn local(&self) -> &ImageCache {
        self
    }
}

/// Images in Redis, one hash per image (`m` model, `b` bytes, `e` ETag) expiring with the TTL,
/// plus an index (sorted by expiry) and a byte total that keep the whole under `max_bytes`,
/// oldest first. This replica's memory holds what it fetched from upstreams and, while Redis is
/// unreachable, what it made.
pub struct RedisImages {
    redis: Redis,
    local: ImageCache,
    max_bytes: u64,
    ttl: Duration,
    insert: redis::Script,
    get: redis::Script,
}

const INDEX_KEY: &str = "llmux:img:index";
const SIZES_KEY: &str = "llmux:img:sizes";
const TOTAL_KEY: &str = "llmux:img:bytes";

/// Drops expired entries from the index, evicts the oldest images until the new one fits, then
/// stores it. KEYS: image, index, sizes, total. ARGV: model, size, max bytes, TTL ms, bytes,
/// ETag. Returns 1, or 0 when the image alone is larger than the store. Keys of evicted images
/// come from the index (fine on one Redis; not cluster-safe).
const INSERT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local size = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local function drop(member)
  local dropped = tonumber(redis.call('HGET', KEYS[3], member) or '0')
  redis.call('HDEL', KEYS[3], member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('DEL', member)
  redis.call('DECRBY', KEYS[4], dropped)
end
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)) do
  drop(member)
end
if size > max then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then drop(KEYS[1]) end
local used = tonumber(redis.call('GET', KEYS[4]) or '0')
while used + size > max do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #oldest == 0 then break end
  drop(oldest[1])
  used = tonumber(redis.call('GET', KEYS[4]) or '0')
end
redis.call('HSET', KEYS[1], 'm', ARGV[1], 'b', ARGV[5], 'e', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl, KEYS[1])
redis.call('HSET', KEYS[3], KEYS[1], size)
redis.call('INCRBY', KEYS[4], size)
return 1
";

/// KEYS: image. Returns {model, bytes, ETag, ms left} or nil.
const GET_SCRIPT: &str = r"
local found = redis.call('HMGET', KEYS[1], 'm', 'b', 'e')
if not found[1] then return nil end
return {found[1], found[2], found[3], redis.call('PTTL', KEYS[1])}
";

impl RedisImages {
    pub fn new(redis: Redis, local: ImageCache, max_bytes: u64, ttl: Duration) -> Self {
        Self {
            redis,
            local,
            max_bytes,
            ttl,
            insert: redis::Script::new(INSERT_SCRIPT),
            get: redis::Script::new(GET_SCRIPT),
        }
    }

    async fn insert_shared(
        &self,
        model: &str,
        bytes: Bytes,
    ) -> Result<Option<String>, SharedStateError> {
        let id = new_id();
        let key = key(&id);
        let etag = format!("\"{}\"", new_id());
        let size = bytes.len() as u64;
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let max_bytes = self.max_bytes;
        let stored: i64 = self
            .redis
            .run("insert_image", |mut connection| async move {
                self.insert
                    .key(&key)
                    .key(INDEX_KEY)
                    .key(SIZES_KEY)
                    .key(TOTAL_KEY)
                    .arg(model)
                    .arg(size)
                    .arg(max_bytes)
                    .arg(ttl_ms)
                    .arg(&bytes[..])
                    .arg(&etag)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        Ok((stored == 1).then_some(id))
    }

    async fn get_shared(
        &self,
        model: &str,
        id: &str,
    ) -> Result<Option<CachedImage>, SharedStateError> {
        let key = key(id);
        let found: Option<(String, Vec<u8>, String, i64)> = self
            .redis
            .run("get_image", |mut connection| async move {
                self.get.key(&key).invoke_async(&mut connection).await
            })
            .await?;
        Ok(found
            .filter(|(owner, ..)| owner == model)
            .map(|(_, bytes, etag, left_ms)| CachedImage {
                content_type: sniff_content_type(&bytes),
                etag,
                max_age: Duration::from_millis(u64::try_from(left_ms).unwrap_or(0)),
                bytes: Bytes::from(bytes),
            }))
    }
}

impl ImageStore for RedisImages {
    fn insert_new<'a>(&'a self, model: &'a str, bytes: Bytes) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            match self.insert_shared(model, bytes.clone()).await {
                Ok(id) => id,
                Err(error) => {
                    tracing::debug!(model, error = %error, "image kept by this replica only");
                    self.local.insert_new(model, bytes)
                }
            }
        })
    }

    fn get<'a>(&'a self, model: &'a str, id: &'a str) -> BoxFuture<'a, Option<CachedImage>> {
        Box::pin(async move {
            if let Some(image) = self.local.get(model, id) {
                return Some(image);
            }
            if !is_plain_id(id) {
                return None;
            }
            self.get_shared(model, id).await.unwrap_or_else(|error| {
                tracing::debug!(model, error = %error, "image looked up in this replica only");
                None
            })
        })
    }

    fn keep_local(&self, model: &str, id: &str, bytes: Bytes) -> bool {
        self.local.insert(model, id, bytes)
    }

    fn local(&self) -> &ImageCache {
        &self.local
    }
}

fn key(id: &str) -> String {
    format!("llmux:img:{id}")
}
