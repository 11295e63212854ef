//! `nomq completions SHELL` and `nomq man`, generated from the clap definitions.

mod cli_support;
use cli_support::*;

const SUBCOMMANDS: [&str; 7] = ["keys", "pub", "sub", "peers", "bench", "completions", "man"];

#[test]
fn completions_name_every_subcommand_and_option() {
    let dir = Scratch::new("completions");
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (code, stdout, stderr) = outcome(&run(&dir, &["completions", shell]));
        assert_eq!(code, Some(0), "{shell}: {stderr}");
        for name in SUBCOMMANDS {
            assert!(stdout.contains(name), "{shell} completions lack {name}");
        }
        for opt in ["channel", "topic", "refusals", "stdin-line"] {
            // fish writes `-l channel`, the others `--channel`.
            let named =
                stdout.contains(&format!("--{opt}")) || stdout.contains(&format!("-l {opt}"));
            assert!(named, "{shell} completions lack --{opt}");
        }
    }
    let (code, _, stderr) = outcome(&run(&dir, &["completions", "tcsh"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("bash") && stderr.contains("powershell"), "{stderr}");
}

#[test]
fn man_page_is_roff_with_every_subcommand() {
    let dir = Scratch::new("man");
    let (code, page, stderr) = outcome(&run(&dir, &["man"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(page.contains(".TH nomq 1"), "{page}");
    for name in SUBCOMMANDS {
        assert!(page.contains(&format!(".SH \"NOMQ {}\"", name.to_uppercase())), "{name}");
    }
    // roff escapes the dashes of options.
    for opt in ["channel", "stdin\\-line", "timeout\\-s", "refusals"] {
        assert!(page.contains(&format!("\\-\\-{opt}")), "the page lacks --{opt}");
    }
}
