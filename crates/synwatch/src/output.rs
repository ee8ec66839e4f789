//! Result formats of `synwatch scan`: text, JSON lines and CSV.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;
use synwatch_engine::Port;

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `198.18.0.7:80/tcp open 0.41ms`
    Text,
    /// One JSON object per line.
    Jsonl,
    /// `ip,port,proto,state,rtt_us,suspect,verify,name` with a header line.
    Csv,
}

/// One result line.
#[derive(Debug, Serialize)]
pub struct Line {
    /// Target address.
    pub ip: IpAddr,
    /// Target port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub proto: &'static str,
    /// `open`, `closed`, `filtered` or (UDP, no answer) `open|filtered`.
    pub state: &'static str,
    /// Round-trip time in microseconds, when known.
    pub rtt_us: Option<u64>,
    /// For an open port of a host that answers SYN-ACK everywhere: `all_open` or `synproxy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspect: Option<&'static str>,
    /// With `--verify connect`, for an open port: `ok`, `reset`, `refused`, `timeout` or
    /// `unreachable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<&'static str>,
    /// The host name the address was resolved from, for targets given by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What is known of an open port beyond its SYN-ACK.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenNotes {
    /// Its host's suspect reason.
    pub suspect: Option<&'static str>,
    /// Its verification's verdict.
    pub verify: Option<&'static str>,
}

/// Writes result lines in one format.
pub struct Writer<W: Write> {
    format: Format,
    out: W,
    names: HashMap<IpAddr, String>,
}

impl<W: Write> Writer<W> {
    /// A writer; CSV gets its header line at once.
    pub fn new(format: Format, mut out: W) -> io::Result<Writer<W>> {
        if format == Format::Csv {
            writeln!(out, "ip,port,proto,state,rtt_us,suspect,verify,name")?;
        }
        Ok(Writer { format, out, names: HashMap::new() })
    }

    /// Names the addresses that came from host names (the first name of each).
    pub fn with_names(mut self, names: HashMap<IpAddr, String>) -> Writer<W> {
        self.names = names;
        self
    }

    /// Writes one result.
    pub fn write(&mut self, ip: IpAddr, port: Port, state: &'static str, rtt: Option<Duration>) -> io::Result<()> {
        self.write_noted(ip, port, state, rtt, OpenNotes::default())
    }

    /// Writes one result, with its host's suspect reason and its verification.
    pub fn write_noted(
        &mut self,
        ip: IpAddr,
        port: Port,
        state: &'static str,
        rtt: Option<Duration>,
        notes: OpenNotes,
    ) -> io::Result<()> {
        let OpenNotes { suspect, verify } = notes;
        let rtt_us = rtt.map(|rtt| rtt.as_micros() as u64);
        let proto = port.protocol.name();
        let name = self.names.get(&ip).cloned();
        let line = Line { ip, port: port.number, proto, state, rtt_us, suspect, verify, name };
        match self.format {
            Format::Jsonl => {
                serde_json::to_writer(&mut self.out, &line)?;
                self.out.write_all(b"\n")
            }
            Format::Csv => {
                let rtt = line.rtt_us.map(|micros| micros.to_string()).unwrap_or_default();
                let (suspect, verify) = (suspect.unwrap_or(""), verify.unwrap_or(""));
                // Names are validated (letters, digits, '-', '_', '.'): no CSV quoting is needed.
                let name = line.name.as_deref().unwrap_or("");
                writeln!(self.out, "{},{},{proto},{},{rtt},{suspect},{verify},{name}", line.ip, line.port, line.state)
            }
            Format::Text => {
                let number = port.number;
                let address = match ip {
                    IpAddr::V4(v4) => format!("{v4}:{number}"),
                    IpAddr::V6(v6) => format!("[{v6}]:{number}"),
                };
                let mut suspect = suspect.map(|reason| format!(" suspect={reason}")).unwrap_or_default();
                if let Some(verdict) = verify {
                    suspect.push_str(&format!(" verify={verdict}"));
                }
                if let Some(name) = &line.name {
                    suspect.push_str(&format!(" name={name}"));
                }
                match rtt {
                    Some(rtt) => {
                        writeln!(self.out, "{address}/{proto} {state} {:.2}ms{suspect}", rtt.as_secs_f64() * 1000.0)
                    }
                    None => writeln!(self.out, "{address}/{proto} {state}{suspect}"),
                }
            }
        }
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
