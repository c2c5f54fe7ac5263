//! Built-in apps for meshes without container images: `ama sample httpbin` (the article's
//! httpbin, the endpoints the Istio walkthroughs use) and `ama sample sleep` (the article's
//! `sleep infinity` client, stopping on SIGTERM).

pub mod httpbin;
pub mod sleep;
