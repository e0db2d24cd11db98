//! Reading a counter from the gateway's `/metrics` after a phase (hyper's HTTP/1 client: the
//! same hyper the server uses).

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// The value of the sample `name` (e.g. `flowgate_runs_log_incomplete_total`) in the
/// Prometheus text at `http://{addr}/metrics`, within `timeout` in all.
pub async fn counter(addr: SocketAddr, name: &str, timeout: Duration) -> Result<u64, String> {
    let fetch = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
        let conn = tokio::spawn(conn);
        let request = hyper::Request::get("/metrics")
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = send
            .send_request(request)
            .await
            .map_err(|e| format!("GET http://{addr}/metrics: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading http://{addr}/metrics: {e}"))?
            .to_bytes();
        conn.abort();
        if !status.is_success() {
            return Err(format!("GET http://{addr}/metrics answered {status}"));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    let text = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("no answer from http://{addr}/metrics within {timeout:?}"))??;
    sample(&text, name).ok_or_else(|| format!("http://{addr}/metrics has no sample {name}"))
}

/// The value of an unlabelled sample in Prometheus text.
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn a_sample_is_read_by_its_exact_name() {
        let text = "# HELP flowgate_runs_log_incomplete Runs...\n\
                    # TYPE flowgate_runs_log_incomplete counter\n\
                    flowgate_runs_log_incomplete_replays_total 4\n\
                    flowgate_runs_log_incomplete_total 3\n";
        assert_eq!(sample(text, "flowgate_runs_log_incomplete_total"), Some(3));
        assert_eq!(sample(text, "flowgate_runs_log_incomplete"), None);
        assert_eq!(sample(text, "flowgate_missing_total"), None);
    }
}
