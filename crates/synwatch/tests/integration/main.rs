//! The one integration-test binary of synwatch (ripgrep style): shared helpers in
//! [`helpers`], one module per area.

mod alerts;
mod architecture;
mod bench;
mod cli;
mod connect_mode;
mod deployments;
mod discovery;
mod docs;
mod field_lab;
mod field_lab_udp;
mod helpers;
mod history;
mod http_limits;
mod lab_scan;
mod names;
mod ondemand;
mod operations;
mod serve;
mod suspects;
mod systemd;
mod udp;
