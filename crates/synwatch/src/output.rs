//! Result formats of `synwatch scan`: text, JSON lines and CSV.

use std::io::{self, Write};
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `198.18.0.7:80/tcp open 0.41ms`
    Text,
    /// One JSON object per line.
    Jsonl,
    /// `ip,port,proto,state,rtt_us,suspect` with a header line.
    Csv,
}

/// One result line.
#[derive(Debug, Serialize)]
pub struct Line {
    /// Target address.
    pub ip: IpAddr,
    /// Target port.
    pub port: u16,
    /// Always `tcp`.
    pub proto: &'static str,
    /// `open`, `closed` or `filtered`.
    pub state: &'static str,
    /// Round-trip time in microseconds, when known.
    pub rtt_us: Option<u64>,
    /// For an open port of a host that answers SYN-ACK everywhere: `all_open` or `synproxy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspect: Option<&'static str>,
}

/// Writes result lines in one format.
pub struct Writer<W: Write> {
    format: Format,
    out: W,
}

impl<W: Write> Writer<W> {
    /// A writer; CSV gets its header line at once.
    pub fn new(format: Format, mut out: W) -> io::Result<Writer<W>> {
        if format == Format::Csv {
            writeln!(out, "ip,port,proto,state,rtt_us,suspect")?;
        }
        Ok(Writer { format, out })
    }

    /// Writes one result.
    pub fn write(&mut self, ip: IpAddr, port: u16, state: &'static str, rtt: Option<Duration>) -> io::Result<()> {
        self.write_suspect(ip, port, state, rtt, None)
    }

    /// Writes one result, with its host's suspect reason.
    pub fn write_suspect(
        &mut self,
        ip: IpAddr,
        port: u16,
        state: &'static str,
        rtt: Option<Duration>,
        suspect: Option<&'static str>,
    ) -> io::Result<()> {
        let line = Line { ip, port, proto: "tcp", state, rtt_us: rtt.map(|rtt| rtt.as_micros() as u64), suspect };
        match self.format {
            Format::Jsonl => {
                serde_json::to_writer(&mut self.out, &line)?;
                self.out.write_all(b"\n")
            }
            Format::Csv => {
                let rtt = line.rtt_us.map(|micros| micros.to_string()).unwrap_or_default();
                writeln!(self.out, "{},{},tcp,{},{},{}", line.ip, line.port, line.state, rtt, suspect.unwrap_or(""))
            }
            Format::Text => {
                let address = match ip {
                    IpAddr::V4(v4) => format!("{v4}:{port}"),
                    IpAddr::V6(v6) => format!("[{v6}]:{port}"),
                };
                let suspect = suspect.map(|reason| format!(" suspect={reason}")).unwrap_or_default();
                match rtt {
                    Some(rtt) => {
                        writeln!(self.out, "{address}/tcp {state} {:.2}ms{suspect}", rtt.as_secs_f64() * 1000.0)
                    }
                    None => writeln!(self.out, "{address}/tcp {state}{suspect}"),
                }
            }
        }
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
