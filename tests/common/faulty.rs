//! A fault-injecting `ObjectStore` wrapper for the faults a real server cannot be made to produce
//! on demand: 500/503 answers, a transfer that stalls half-way, a store that accepts an object
//! and loses it. It forwards every method (object_store's `limit.rs` pattern); faults are
//! switched at run time.

#![allow(dead_code)]

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

#[derive(Default, Debug)]
pub struct Faults {
    /// Every write answers 503.
    pub writes_503: AtomicBool,
    /// Every read answers 500.
    pub reads_500: AtomicBool,
    /// Reads of `data` objects stall after this many bytes (0 = off).
    pub stall_after: AtomicU64,
    /// Small puts (manifests, key objects) are acknowledged but not stored.
    pub lose_small_puts: AtomicBool,
}

#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    pub faults: Arc<Faults>,
}

impl FaultyStore {
    pub fn wrap(inner: Arc<dyn ObjectStore>) -> (Arc<dyn ObjectStore>, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        (
            Arc::new(FaultyStore {
                inner,
                faults: faults.clone(),
            }),
            faults,
        )
    }
}

impl std::fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

fn err(code: u16) -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: format!("injected fault: HTTP {code} Service Unavailable").into(),
    }
}

#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    faults: Arc<Faults>,
}

#[async_trait::async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
        if self.faults.writes_503.load(Ordering::SeqCst) {
            return Box::pin(async { Err(err(503)) });
        }
        self.inner.put_part(data)
    }
    async fn complete(&mut self) -> Result<PutResult> {
        if self.faults.writes_503.load(Ordering::SeqCst) {
            return Err(err(503));
        }
        self.inner.complete().await
    }
    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[async_trait::async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if self.faults.writes_503.load(Ordering::SeqCst) {
            return Err(err(503));
        }
        if self.faults.lose_small_puts.load(Ordering::SeqCst)
            && location.as_ref().ends_with(".json")
        {
            return Ok(PutResult {
                e_tag: None,
                version: None,
                extensions: Default::default(),
            });
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        if self.faults.writes_503.load(Ordering::SeqCst) {
            return Err(err(503));
        }
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            faults: self.faults.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if self.faults.reads_500.load(Ordering::SeqCst) {
            return Err(err(500));
        }
        let r = self.inner.get_opts(location, options).await?;
        let stall = self.faults.stall_after.load(Ordering::SeqCst);
        if stall == 0 || !location.as_ref().ends_with("/data") || options_is_head(&r) {
            return Ok(r);
        }
        let GetResult {
            meta,
            range,
            attributes,
            payload,
            extensions,
        } = r;
        let stream = match payload {
            GetResultPayload::Stream(s) => s,
            other => GetResult {
                payload: other,
                meta: meta.clone(),
                range: range.clone(),
                attributes: attributes.clone(),
                extensions: Default::default(),
            }
            .into_stream(),
        };
        // Pass bytes through until `stall` bytes were sent, then hang (a stalled transfer).
        let limited = futures::stream::unfold(
            (stream, 0u64, false),
            move |(mut s, sent, hung)| async move {
                if hung {
                    futures::future::pending::<()>().await;
                }
                match s.next().await {
                    None => None,
                    Some(Err(e)) => Some((Err(e), (s, sent, true))),
                    Some(Ok(b)) => {
                        let keep = (stall.saturating_sub(sent) as usize).min(b.len());
                        let now = sent + keep as u64;
                        Some((Ok(b.slice(..keep)), (s, now, now >= stall)))
                    }
                }
            },
        )
        .boxed();
        Ok(GetResult {
            payload: GetResultPayload::Stream(limited),
            meta,
            range,
            attributes,
            extensions,
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        if self.faults.reads_500.load(Ordering::SeqCst) {
            return Err(err(500));
        }
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

fn options_is_head(r: &GetResult) -> bool {
    r.range.is_empty() && r.meta.size > 0
}
