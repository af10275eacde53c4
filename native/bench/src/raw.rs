//! B3: the ceiling. One connection, frames of the same size as ours
//! (u8 type + u32 length + ~100 B of headers + 512 B payload), many frames
//! encoded into one buffer per write, rustls with the same certificates,
//! and no routing, queues or acknowledgements: what the loopback, the
//! kernel and TLS allow on this machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use gd_core::transport::tls::{server_name, TlsSetup};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::dcs::{Certs, DC2, PAYLOAD_LEN};
use crate::stats::cpu_time;
use crate::transport::{pace_until, tighten_timer_slack, Latency, Throughput};
use crate::BenchError;

/// Bytes of our stanza header (seq, clock, ttl, id, origin, sender key,
/// from, to, kind) for the JIDs the benchmark uses.
const HEADER_BODY: usize = 100;
const FRAME_HEADER: usize = 5;
/// Flush the write buffer once it holds this much.
const WRITE_BATCH: usize = 64 * 1024;

/// Sends `n` frames over one connection; `tls` picks rustls or plain TCP.
pub fn raw(certs: &Certs, tls: bool, n: u64) -> Result<Throughput, BenchError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let setup = if tls {
        Some(TlsSetup::from_config(&certs.dc2)?)
    } else {
        None
    };
    rt.block_on(run(setup, n))
}

async fn run(setup: Option<TlsSetup>, n: u64) -> Result<Throughput, BenchError> {
    let acceptor = setup.as_ref().map(|s| TlsAcceptor::from(s.server_config()));
    let connector = setup
        .as_ref()
        .map(|s| TlsConnector::from(Arc::clone(&s.client_config())));
    let (client, server) = loopback().await?;

    match (acceptor, connector) {
        (Some(a), Some(c)) => {
            let name = server_name(DC2)?;
            let (server, client) = tokio::join!(a.accept(server), c.connect(name, client));
            exchange(client?, server?, n).await
        }
        _ => exchange(client, server, n).await,
    }
}

/// The timed part of B3: `n` frames from `w` to `r`, both ends at once.
async fn exchange<W, R>(w: W, r: R, n: u64) -> Result<Throughput, BenchError>
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let (sent, got) = tokio::join!(
        tokio::spawn(write_frames(w, n)),
        tokio::spawn(read_frames(r, n))
    );
    let got = got.map_err(BenchError::msg)??;
    let elapsed = t0.elapsed().max(Duration::from_nanos(1));
    sent.map_err(BenchError::msg)??;
    let cpu = cpu_time().saturating_sub(cpu0);
    if got != n {
        return Err(BenchError::msg(format!("B3: received {got} of {n} frames")));
    }
    Ok(Throughput {
        per_sec: n as f64 / elapsed.as_secs_f64(),
        cpu_s_per_million: cpu.as_secs_f64() * 1e6 / n as f64,
    })
}

/// Returns the stream still open: closing it (a TLS close_notify) while the
/// reader is behind is not part of what is measured.
async fn write_frames<W: AsyncWrite + Unpin>(mut w: W, n: u64) -> std::io::Result<W> {
    let header = [7u8; HEADER_BODY];
    let payload = [b'x'; PAYLOAD_LEN];
    let body = (HEADER_BODY + PAYLOAD_LEN) as u32;
    let mut buf = BytesMut::with_capacity(WRITE_BATCH + FRAME_HEADER + body as usize);
    for _ in 0..n {
        buf.put_u8(3);
        buf.put_u32(body);
        buf.put_slice(&header);
        buf.put_slice(&payload);
        if buf.len() >= WRITE_BATCH {
            w.write_all(&buf).await?;
            buf.clear();
        }
    }
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(w)
}

/// B3 latency floor: the same raw link at a fixed `rate` for `secs`, fed
/// the way ours is (a paced plain thread hands each frame to a tokio
/// writer task through a channel; the writer writes and flushes what it
/// has), each frame carrying the time it was due; the reader records
/// delivery minus due. What the machine, tokio and rustls allow at that
/// rate, to read B2 against.
pub fn raw_latency(certs: &Certs, rate: u64, secs: f64) -> Result<Latency, BenchError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let setup = TlsSetup::from_config(&certs.dc2)?;
    let epoch = Instant::now();
    let n = (rate as f64 * secs) as u64;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let receiving = rt.spawn(latency_link(setup, rx, n, epoch));
    // The pacer: the same schedule and sleep as B2's sender.
    tighten_timer_slack();
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = Instant::now();
    for i in 0..n {
        let due = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        pace_until(due);
        if tx
            .send(due.saturating_duration_since(epoch).as_nanos() as u64)
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    let samples = rt.block_on(receiving).map_err(BenchError::msg)??;
    if samples.len() as u64 != n {
        return Err(BenchError::msg(format!(
            "B3 latency: received {} of {n} frames",
            samples.len()
        )));
    }
    Ok(Latency::of(samples))
}

/// A TCP connection over loopback, both ends with TCP_NODELAY: (client, server).
async fn loopback() -> Result<(TcpStream, TcpStream), BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accept = tokio::spawn(async move {
        let (s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        Ok::<_, std::io::Error>(s)
    });
    let client = TcpStream::connect(addr).await?;
    client.set_nodelay(true)?;
    let server = accept.await.map_err(BenchError::msg)??;
    Ok((client, server))
}

async fn latency_link(
    setup: TlsSetup,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<u64>,
    n: u64,
    epoch: Instant,
) -> Result<Vec<u64>, BenchError> {
    let acceptor = TlsAcceptor::from(setup.server_config());
    let connector = TlsConnector::from(Arc::clone(&setup.client_config()));
    let (client, server) = loopback().await?;
    let name = server_name(DC2)?;
    let (server, client) = tokio::join!(acceptor.accept(server), connector.connect(name, client));
    let (mut server, mut client) = (server?, client?);
    let writer = tokio::spawn(async move {
        let header = [7u8; HEADER_BODY - 8];
        let payload = [b'x'; PAYLOAD_LEN];
        let body = (HEADER_BODY + PAYLOAD_LEN) as u32;
        let mut buf = BytesMut::with_capacity(WRITE_BATCH);
        while let Some(due) = rx.recv().await {
            // Whatever else is already due goes into the same write.
            let mut next = Some(due);
            while let Some(due) = next {
                buf.put_u8(3);
                buf.put_u32(body);
                buf.put_u64(due);
                buf.put_slice(&header);
                buf.put_slice(&payload);
                next = rx.try_recv().ok();
            }
            client.write_all(&buf).await?;
            client.flush().await?;
            buf.clear();
        }
        Ok::<_, std::io::Error>(client)
    });
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let mut samples = Vec::with_capacity(n as usize);
    while (samples.len() as u64) < n {
        if server.read_buf(&mut buf).await? == 0 {
            break;
        }
        let now = epoch.elapsed().as_nanos() as u64;
        while buf.len() >= FRAME_HEADER {
            let len = (&buf[1..FRAME_HEADER]).get_u32() as usize;
            if buf.len() < FRAME_HEADER + len {
                break;
            }
            let frame = buf.split_to(FRAME_HEADER + len);
            let due = (&frame[FRAME_HEADER..FRAME_HEADER + 8]).get_u64();
            samples.push(now.saturating_sub(due));
        }
        if buf.capacity() - buf.len() < 64 * 1024 {
            buf.reserve(256 * 1024);
        }
    }
    let _client = writer.await.map_err(BenchError::msg)??;
    Ok(samples)
}

/// Splits the stream on the length prefix and counts the frames.
async fn read_frames<R: AsyncRead + Unpin>(mut r: R, n: u64) -> std::io::Result<u64> {
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let mut count = 0u64;
    while count < n {
        if r.read_buf(&mut buf).await? == 0 {
            break;
        }
        while buf.len() >= FRAME_HEADER {
            let len = (&buf[1..FRAME_HEADER]).get_u32() as usize;
            if buf.len() < FRAME_HEADER + len {
                break;
            }
            let frame = buf.split_to(FRAME_HEADER + len).freeze();
            std::hint::black_box(frame);
            count += 1;
        }
        if buf.capacity() - buf.len() < 64 * 1024 {
            buf.reserve(256 * 1024);
        }
    }
    Ok(count)
}
