//! `nomq`: publish, subscribe, manage keyrings and measure NoMQ from a shell, with the
//! habits of `mosquitto_pub` / `mosquitto_sub`.
//!
//! Exit codes: 0 success; 1 delivery not confirmed (or too few messages before a
//! timeout); 2 usage, configuration or keyring errors; 3 network errors; `nomq sub`
//! stopped by SIGINT 130, by SIGTERM 143 (after withdrawing its subscriptions).

mod bench;
mod bridge;
mod common;
mod keys;
mod peers;
mod publish;
mod subscribe;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use common::Failure;
use std::process::ExitCode;

/// The exit codes, in the --help of `nomq` and `nomq pub`.
const EXIT_CODES: &str = "Exit codes: 0 success, 1 delivery not confirmed (or, for `nomq \
sub`, too few messages before --timeout-s), 2 usage/configuration/keyring error, 3 network \
error; `nomq sub` stopped by SIGINT (Ctrl-C) 130, by SIGTERM 143.\n\
Logs go to stderr; set RUST_LOG (default: warn).";

/// The exit codes of `nomq sub`.
const SUB_EXIT_CODES: &str = "Exit codes: 0 success (--count messages arrived, or at least \
one before --timeout-s without --count), 1 too few messages before --timeout-s, 2 \
usage/configuration/keyring error, 3 network error, 130 stopped by SIGINT (Ctrl-C), 143 \
stopped by SIGTERM. On a signal it withdraws its subscriptions (UNSUBSCRIBE) before it exits.\n\
Logs go to stderr; set RUST_LOG (default: warn).";

/// Brokerless, encrypted publish/subscribe over UDP.
#[derive(Parser, Debug)]
#[command(name = "nomq", version)]
#[command(after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate, inspect and rotate keyring files.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Publish a message (with -l, one per line of stdin).
    #[command(after_help = EXIT_CODES)]
    Pub(publish::PubArgs),
    /// Print the messages of channels as they arrive.
    #[command(after_help = SUB_EXIT_CODES)]
    Sub(subscribe::SubArgs),
    /// Show the peers this keyring can see, their subscriptions, traffic and refusals:
    /// live (refreshed each second), or `--once --json` for scripts.
    Peers(peers::PeersArgs),
    /// Bridge this NoMQ network to an MQTT broker (mappings both ways, end-to-end
    /// acknowledgements; docs/BRIDGE.md). Stops cleanly on SIGINT/SIGTERM (exit 0) and
    /// prints its counters.
    Bridge(bridge::BridgeArgs),
    /// Measure throughput and latency on 127.0.0.1 against a plain UDP loop.
    Bench(bench::BenchArgs),
    /// Print a shell completion script (bash: `source <(nomq completions bash)`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `nomq man | man -l -`.
    Man,
}

fn main() -> ExitCode {
    let cmd = common::without_empty_env(Cli::command());
    let cli = cmd
        .clone()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
        .unwrap_or_else(|e| name_env_source(&cmd, e).exit());
    init_logging();
    let result = match cli.command {
        Command::Keys(cmd) => keys::run(cmd),
        Command::Pub(args) => block_on(publish::run(args)),
        Command::Sub(args) => block_on(subscribe::run(args)),
        Command::Peers(args) => block_on(peers::run(args)),
        Command::Bridge(args) => block_on(bridge::run(args)),
        Command::Bench(args) => bench::run(&args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "nomq", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => man(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("error: {f}");
            }
            ExitCode::from(f.code)
        }
    }
}

/// A value clap refused says which flag it was for; if it came from the flag's
/// environment variable instead of the command line, add a tip naming the variable.
fn name_env_source(cmd: &clap::Command, mut e: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(e.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return e;
    }
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) =
        (e.get(ContextKind::InvalidArg), e.get(ContextKind::InvalidValue))
    else {
        return e;
    };
    // "--peer <ADDR>": the flag's long name. (An `Arg` of a command not yet built
    // cannot be displayed, so compare names.)
    let Some(long) = arg.split_whitespace().next().and_then(|f| f.strip_prefix("--")) else {
        return e;
    };
    fn env_of<'c>(cmd: &'c clap::Command, long: &str) -> Option<&'c std::ffi::OsStr> {
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(clap::Arg::get_env)
            .or_else(|| cmd.get_subcommands().find_map(|c| env_of(c, long)))
    }
    let Some(var) = env_of(cmd, long) else { return e };
    let flag = format!("--{long}");
    let on_command_line = std::env::args_os().any(|a| {
        let a = a.to_string_lossy();
        a == flag || a.starts_with(&format!("{flag}="))
    });
    let from_env = std::env::var_os(var).is_some_and(|v| v.to_string_lossy().contains(value));
    if from_env && !on_command_line {
        let tip =
            format!("the value comes from the environment variable {}", var.to_string_lossy());
        e.insert(ContextKind::Suggested, ContextValue::StyledStrs(vec![tip.into()]));
    }
    e
}

/// `nomq man`: one roff page, from the same clap definitions as `--help`: the page of
/// `nomq`, then a section per subcommand with its synopsis and options.
fn man() -> Result<(), Failure> {
    use std::io::Write;
    let cmd = Cli::command();
    let mut out = Vec::new();
    let mut r = clap_mangen::Man::new(cmd.clone()).render(&mut out);
    for sub in cmd.get_subcommands() {
        let name = format!("nomq {}", sub.get_name());
        let about = sub.get_about().map(ToString::to_string).unwrap_or_default();
        let sub = sub.clone().bin_name(name.clone());
        let man = clap_mangen::Man::new(sub.clone());
        r = r
            .and_then(|()| {
                writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
                writeln!(out, "{}", about.replace('\\', "\\\\"))
            })
            .and_then(|()| man.render_synopsis_section(&mut out))
            .and_then(|()| man.render_options_section(&mut out));
        if sub.has_subcommands() {
            r = r.and_then(|()| man.render_subcommands_section(&mut out));
        }
    }
    r.and_then(|()| std::io::stdout().write_all(&out))
        .map_err(|e| Failure::network(format!("cannot write the man page: {e}")))
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Runs a command on a single-threaded runtime: one node needs no more.
fn block_on(f: impl Future<Output = Result<(), Failure>>) -> Result<(), Failure> {
    common::runtime()?.block_on(f)
}
