//! Data-parallel training: the collective operations one optimizer step needs, over an existing
//! distributed engine.
//!
//! A run's *replica count* R is part of its definition (it is recorded, and resume and replay
//! keep it): each step's micro-batches are split into R contiguous blocks, each block's gradients
//! are summed in order, and the R block sums are added in block order. R processes (MPI ranks)
//! each compute one block; one process can also compute all R blocks itself and reach the same
//! weights bit for bit, which is how a data-parallel run is replayed or resumed on one machine.
//!
//! [`Solo`] is the single process; [`Mpi`] (cargo feature `mpi`) runs one rank per process under
//! `mpirun`. Only the main thread calls MPI (candle's worker threads never do).

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

/// What a training step needs from the processes it runs on. Every rank calls every operation in
/// the same order; a rank that errors before a collective would leave the others waiting, so
/// failures are first agreed on through [`Collective::all_gather`].
pub trait Collective {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Name recorded in the ledger (`solo`, `mpi`).
    fn backend(&self) -> &'static str;
    /// Replaces `buf` on every rank with the element-wise sum over ranks, added in rank order.
    fn sum_in_rank_order(&self, buf: &mut [f32]) -> Result<()>;
    /// Every rank's `mine`, in rank order. Every rank must send the same number of bytes.
    fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>>;

    /// Each tensor replaced by its sum over ranks. By default through host memory, added in rank
    /// order ([`Collective::sum_in_rank_order`]); NCCL sums on the GPU in its own order.
    fn sum_tensors(&self, tensors: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let mut flat = Vec::with_capacity(tensors.iter().map(Tensor::elem_count).sum());
        for t in &tensors {
            flat.extend(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        }
        self.sum_in_rank_order(&mut flat)?;
        let mut at = 0;
        tensors
            .iter()
            .map(|t| {
                let n = t.elem_count();
                let s = Tensor::from_slice(&flat[at..at + n], t.shape(), t.device())?.to_dtype(t.dtype())?;
                at += n;
                Ok(s)
            })
            .collect()
    }
}

/// One process; every collective is the identity.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn backend(&self) -> &'static str {
        "solo"
    }
    fn sum_in_rank_order(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![mine.to_vec()])
    }
}

static SOLO: Solo = Solo;

/// The processes a run trains on and the replica count R that defines it (see the module docs).
#[derive(Clone, Copy)]
pub struct DataParallel<'a> {
    pub comm: &'a dyn Collective,
    pub replicas: usize,
}

impl DataParallel<'static> {
    /// One process, one replica: plain training.
    pub fn solo() -> Self {
        Self { comm: &SOLO, replicas: 1 }
    }
}

impl<'a> DataParallel<'a> {
    /// R replicas on `comm`: either one process per replica, or one process computing them all.
    pub fn new(comm: &'a dyn Collective, replicas: usize) -> Result<Self> {
        let w = comm.world_size();
        if replicas == 0 || (w != 1 && w != replicas) {
            bail!("{replicas} data-parallel replicas cannot run on {w} processes (use 1 process or {replicas})");
        }
        Ok(Self { comm, replicas })
    }

    /// Whether this process writes the run's files (checkpoints, ledger, metrics).
    pub fn is_leader(&self) -> bool {
        self.comm.rank() == 0
    }

    /// The micro-batch index ranges this process computes, one per replica it stands for.
    pub fn blocks(&self, accum: usize) -> Result<Vec<std::ops::Range<usize>>> {
        if !accum.is_multiple_of(self.replicas) {
            bail!(
                "{accum} micro-batches per step cannot be split among {} data-parallel replicas: make \
                 --batch-tokens a multiple of seq_len × batch_size × {}",
                self.replicas,
                self.replicas
            );
        }
        let per = accum / self.replicas;
        let mine: Vec<usize> =
            if self.comm.world_size() == 1 { (0..self.replicas).collect() } else { vec![self.comm.rank()] };
        Ok(mine.into_iter().map(|b| b * per..(b + 1) * per).collect())
    }
}

/// Rank 0's `value` on every rank (decisions one rank takes, such as a time budget's step count).
pub fn agree_u64(comm: &dyn Collective, value: u64) -> Result<u64> {
    let all = comm.all_gather(&value.to_le_bytes())?;
    Ok(u64::from_le_bytes(all[0][..8].try_into()?))
}

/// Fails on every rank when any rank failed, naming the first failing rank's error, so that no
/// rank is left waiting in a collective the failed one will never join.
pub fn agree_ok<T>(comm: &dyn Collective, local: Result<T>) -> Result<T> {
    let msg = local.as_ref().err().map(|e| format!("{e:#}")).unwrap_or_default();
    let mut mine = vec![0u8; 1 + 1024];
    let bytes = msg.as_bytes();
    let n = bytes.len().min(1024);
    mine[0] = u8::from(local.is_err());
    mine[1..1 + n].copy_from_slice(&bytes[..n]);
    let all = comm.all_gather(&mine)?;
    if let Some((rank, m)) = all.iter().enumerate().find(|(_, m)| m[0] == 1) {
        if let Err(e) = local {
            return Err(e);
        }
        let text = String::from_utf8_lossy(&m[1..]).trim_end_matches('\0').to_string();
        bail!("rank {rank} failed: {text}");
    }
    local
}

/// Checks that every rank holds the same weights (by hash): data-parallel replicas that drift
/// apart would otherwise go unnoticed until the weights are compared.
pub fn check_replicas_agree(comm: &dyn Collective, weights_sha256: &str) -> Result<()> {
    let all = comm.all_gather(weights_sha256.as_bytes())?;
    for (rank, h) in all.iter().enumerate() {
        if h.as_slice() != weights_sha256.as_bytes() {
            bail!(
                "data-parallel replicas disagree: rank {rank} holds weights {}…, rank {} holds {}…",
                String::from_utf8_lossy(&h[..12.min(h.len())]),
                comm.rank(),
                &weights_sha256[..12.min(weights_sha256.len())]
            );
        }
    }
    Ok(())
}

#[cfg(feature = "mpi")]
pub use self::mpi_backend::Mpi;
#[cfg(feature = "nccl")]
pub use self::nccl_backend::Nccl;

#[cfg(feature = "mpi")]
mod mpi_backend {
    use super::Collective;
    use anyhow::{bail, Result};
    use mpi::collective::SystemOperation;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    /// Floats per collective call: bounds the gather buffer at `world × 4 MiB`.
    const CHUNK: usize = 1 << 20;

    /// One MPI rank of `MPI_COMM_WORLD`. Finalizes MPI when dropped.
    pub struct Mpi {
        world: SimpleCommunicator,
        _universe: Universe,
    }

    impl Mpi {
        /// Initializes MPI (once per process; main thread only).
        pub fn init() -> Result<Self> {
            let Some((universe, provided)) = mpi::initialize_with_threading(mpi::Threading::Funneled) else {
                bail!("MPI is already initialized in this process");
            };
            // candle's worker threads exist beside the main thread, which alone calls MPI.
            if matches!(provided, mpi::Threading::Single) {
                bail!("this MPI library provides no thread support (MPI_THREAD_FUNNELED is needed)");
            }
            Ok(Self { world: universe.world(), _universe: universe })
        }

        /// This rank's index among the ranks on its machine (to pick its GPU), from the launcher's
        /// environment (Open MPI, MPICH/Hydra, Slurm); the world rank when none says.
        pub fn local_rank(&self) -> usize {
            ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"]
                .iter()
                .find_map(|v| std::env::var(v).ok()?.parse().ok())
                .unwrap_or_else(|| self.rank())
        }

        /// Ends every rank at once: a rank that fails on its own would otherwise leave the others
        /// waiting in a collective forever (and MPI_Finalize waits for them).
        pub fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
    }

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn world_size(&self) -> usize {
            self.world.size() as usize
        }
        fn backend(&self) -> &'static str {
            "mpi"
        }
        fn sum_in_rank_order(&self, buf: &mut [f32]) -> Result<()> {
            let w = self.world_size();
            if w == 1 {
                return Ok(());
            }
            let mut send = vec![0f32; CHUNK.min(buf.len())];
            if w == 2 {
                // a + b is b + a in IEEE arithmetic: MPI's all-reduce already adds in rank order.
                for part in buf.chunks_mut(CHUNK) {
                    let send = &mut send[..part.len()];
                    send.copy_from_slice(part);
                    self.world.all_reduce_into(&send[..], part, SystemOperation::sum());
                }
                return Ok(());
            }
            // More ranks: MPI may add in any tree it likes, so gather and add here in rank order.
            let mut gathered = vec![0f32; w * send.len()];
            for part in buf.chunks_mut(CHUNK) {
                let n = part.len();
                send[..n].copy_from_slice(part);
                let recv = &mut gathered[..w * n];
                self.world.all_gather_into(&send[..n], recv);
                part.copy_from_slice(&recv[..n]);
                for r in 1..w {
                    for (acc, x) in part.iter_mut().zip(&recv[r * n..(r + 1) * n]) {
                        *acc += x;
                    }
                }
            }
            Ok(())
        }
        fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
            // Callers send fixed-size records, so every rank's length is the same.
            let (w, n) = (self.world_size(), mine.len());
            let mut recv = vec![0u8; w * n];
            self.world.all_gather_into(mine, &mut recv[..]);
            Ok((0..w).map(|r| recv[r * n..(r + 1) * n].to_vec()).collect())
        }
    }
}

/// NCCL for the gradients, on the GPU where they are; the host side (starting NCCL, agreeing on
/// failures and decisions) is MPI across ranks, or nothing at all for one process, so a one-GPU
/// machine without MPI still runs the NCCL path. NCCL adds in an order of its own, so a run on it
/// is not reproduced bit for bit by one process (nor is any bf16 GPU run).
#[cfg(feature = "nccl")]
mod nccl_backend {
    use super::{Collective, Solo};
    use anyhow::{bail, Context, Result};
    use candle_core::{DType, Device, Tensor};
    use jarip_kernels::nccl::{all_reduce_sum, Comm, Id};
    use std::cell::OnceCell;
    use std::ffi::c_char;

    /// Who the host-side collectives go through.
    enum Host {
        Alone(Solo),
        #[cfg(feature = "mpi")]
        Mpi(super::Mpi),
    }

    impl Host {
        fn get(&self) -> &dyn Collective {
            match self {
                Host::Alone(s) => s,
                #[cfg(feature = "mpi")]
                Host::Mpi(m) => m,
            }
        }
    }

    pub struct Nccl {
        /// Made on the first sum, on the stream of the device the gradients live on (a
        /// communicator on another stream would race with the kernels that produced them).
        /// Declared first: dropped before MPI is finalized.
        comm: OnceCell<Comm>,
        id: [c_char; 128],
        host: Host,
    }

    /// A fresh NCCL id, as bytes (cudarc panics when it cannot load libnccl: caught here).
    fn draw_id() -> Result<[u8; 128]> {
        match std::panic::catch_unwind(Id::new) {
            Ok(Ok(id)) => {
                let mut out = [0u8; 128];
                for (d, &c) in out.iter_mut().zip(id.internal()) {
                    *d = c as u8;
                }
                Ok(out)
            }
            Ok(Err(e)) => bail!("ncclGetUniqueId: {e:?}"),
            Err(_) => bail!("ncclGetUniqueId panicked (is libnccl.so on the library path?)"),
        }
    }

    impl Nccl {
        /// One process on one GPU: the all-reduce runs over a communicator of one rank.
        pub fn single() -> Result<Self> {
            let bytes = draw_id()?;
            Ok(Self { comm: OnceCell::new(), id: bytes.map(|b| b as c_char), host: Host::Alone(Solo) })
        }

        /// Rank 0 draws the NCCL id and every rank learns it through MPI; if rank 0 cannot (no
        /// libnccl, say), every rank fails together.
        #[cfg(feature = "mpi")]
        pub fn init(mpi: super::Mpi) -> Result<Self> {
            let mut mine = vec![0u8; 1 + 128];
            if mpi.rank() == 0 {
                match draw_id() {
                    Ok(id) => {
                        mine[0] = 1;
                        mine[1..].copy_from_slice(&id);
                    }
                    Err(e) => eprintln!("{e:#}"),
                }
            }
            let all = mpi.all_gather(&mine)?;
            if all[0][0] != 1 {
                bail!("rank 0 could not start NCCL");
            }
            let mut id = [0 as c_char; 128];
            for (d, &s) in id.iter_mut().zip(&all[0][1..]) {
                *d = s as c_char;
            }
            Ok(Self { comm: OnceCell::new(), id, host: Host::Mpi(mpi) })
        }

        pub fn local_rank(&self) -> usize {
            match &self.host {
                Host::Alone(_) => 0,
                #[cfg(feature = "mpi")]
                Host::Mpi(m) => m.local_rank(),
            }
        }

        /// Ends every rank at once (with MPI), or this process.
        pub fn abort(&self, code: i32) -> ! {
            match &self.host {
                Host::Alone(_) => std::process::exit(code),
                #[cfg(feature = "mpi")]
                Host::Mpi(m) => m.abort(code),
            }
        }

        fn comm(&self, device: &Device) -> Result<&Comm> {
            if let Some(c) = self.comm.get() {
                return Ok(c);
            }
            let Device::Cuda(dev) = device else { bail!("--dist nccl needs the model on a CUDA device") };
            let stream = dev.cuda_stream();
            // ncclCommInitRank works on the thread's current device.
            stream.context().bind_to_thread().map_err(|e| anyhow::anyhow!("binding the CUDA context: {e:?}"))?;
            let comm = Comm::from_rank(stream, self.rank(), self.world_size(), Id::uninit(self.id))
                .map_err(|e| anyhow::anyhow!("ncclCommInitRank: {e:?}"))?;
            Ok(self.comm.get_or_init(|| comm))
        }
    }

    impl Collective for Nccl {
        fn rank(&self) -> usize {
            self.host.get().rank()
        }
        fn world_size(&self) -> usize {
            self.host.get().world_size()
        }
        fn backend(&self) -> &'static str {
            "nccl"
        }
        fn sum_in_rank_order(&self, buf: &mut [f32]) -> Result<()> {
            self.host.get().sum_in_rank_order(buf)
        }
        fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
            self.host.get().all_gather(mine)
        }
        /// One all-reduce over all gradients laid end to end.
        fn sum_tensors(&self, tensors: Vec<Tensor>) -> Result<Vec<Tensor>> {
            let Some(first) = tensors.first() else { return Ok(tensors) };
            let comm = self.comm(first.device())?;
            let flat: Vec<Tensor> =
                tensors.iter().map(|t| t.flatten_all()?.to_dtype(DType::F32)).collect::<candle_core::Result<_>>()?;
            let summed = all_reduce_sum(comm, &Tensor::cat(&flat, 0)?).context("gradient all-reduce")?;
            let mut at = 0;
            tensors
                .iter()
                .map(|t| {
                    let n = t.elem_count();
                    let s = summed.narrow(0, at, n)?.reshape(t.shape())?.to_dtype(t.dtype())?;
                    at += n;
                    Ok(s)
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solo_agreement_passes_values_and_errors_through() {
        assert_eq!(agree_u64(&Solo, 77).unwrap(), 77);
        assert_eq!(agree_ok(&Solo, Ok::<_, anyhow::Error>(3)).unwrap(), 3);
        let e = agree_ok::<()>(&Solo, Err(anyhow::anyhow!("loss is NaN"))).unwrap_err();
        assert!(format!("{e:#}").contains("loss is NaN"), "{e:#}");
        check_replicas_agree(&Solo, "abc").unwrap();
    }
}
