//! `jarip serve`: flags onto the server's options (the server is `jarip-serve`).

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// A checkpoint directory, or a run directory (its selected checkpoint, else its newest).
    #[arg(long)]
    pub model: PathBuf,
    /// Address to listen on; loopback unless you say otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the printed URL says which).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1 routes.
    #[arg(long, env = "JARIP_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The model id in /v1/models and in requests (default: the --model directory's name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Sequences decoded together in one forward pass.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Sequences that may wait for a place in the batch; beyond them requests get 429.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Largest request body in bytes (larger: 413).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a request may take from arrival to its last token.
    #[arg(long, default_value_t = 600.0)]
    pub request_timeout: f64,
    /// Weight matrices in memory: f32, or q8_0 (8-bit blocks, faster decoding); default: as stored.
    #[arg(long)]
    pub weights: Option<jarip_infer::WeightFormat>,
    /// Keys and values cached as f32, or f16 (half the memory per sequence; faster at long contexts).
    #[arg(long, default_value = "f32")]
    pub kv_cache: jarip_infer::KvFormat,
    /// MiB of finished conversations' KV caches kept, so that a next turn (or a shared system
    /// prompt) is not prefilled again; 0 turns it off.
    #[arg(long, default_value_t = 512)]
    pub prefix_cache_mb: usize,
}

impl ServeArgs {
    pub fn options(&self) -> Result<jarip_serve::ServeOptions> {
        anyhow::ensure!(
            self.request_timeout.is_finite() && self.request_timeout > 0.0,
            "--request-timeout must be a positive number of seconds"
        );
        anyhow::ensure!(self.max_batch >= 1, "--max-batch must be at least 1");
        Ok(jarip_serve::ServeOptions {
            model: self.model.clone(),
            host: self.host.clone(),
            port: self.port,
            api_key: self.api_key.clone(),
            served_model_name: self.served_model_name.clone(),
            max_batch: self.max_batch,
            max_queue: self.max_queue,
            max_body_bytes: self.max_body_bytes,
            request_timeout: Duration::from_secs_f64(self.request_timeout),
            weights: self.weights,
            kv_cache: self.kv_cache,
            prefix_cache_bytes: self.prefix_cache_mb.saturating_mul(1 << 20),
        })
    }
}

pub fn serve(a: &ServeArgs) -> Result<()> {
    jarip_serve::run(&a.options()?)
}
