//! `bitnet chat`: a conversation with the model in the terminal. Answers stream as they come,
//! in the model's chat format; the line editor keeps the session's history; Ctrl-C stops the
//! answer being written and keeps the chat; `/reset`, `/system TEXT`, `/exit` (or Ctrl-D).
//! With standard input not a terminal (a pipe, a file), every line is one turn and only the
//! answers go to standard output, one per line, so that scripts can use it.
//!
//! Each turn's prompt is the whole conversation, built from the answers' own token ids, and
//! goes through the scheduler's prefix cache: the next turn reads only its new tokens (the
//! statistics line after each answer shows how many were computed and how many came from the
//! cache).

use std::io::{BufRead, IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bitnet_engine::{
    ChatMessage, GenerateOutput, GenerateParams, Interrupt, LoadOptions, Scheduler,
    SchedulerConfig, StopReason, Tokenizer,
};

/// Arguments of `bitnet chat`.
#[derive(clap::Args, Clone)]
pub struct ChatArgs {
    /// Model URI or path (s3://, az://, https://, hf://, file) [env: BITNET_MODEL; default: the
    /// official BitNet b1.58 2B4T I2_S file on Hugging Face, through the model store's cache]
    #[arg(long, value_name = "URI")]
    pub model: Option<String>,
    /// System prompt (change it during the chat with `/system TEXT`).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Kernel threads [default: $BITNET_THREADS, else all cores]
    #[arg(long)]
    pub threads: Option<usize>,
    /// Most tokens per answer (also bounded by the room left in the context).
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: crate::SamplingArgs,
}

/// The conversation so far as token ids: BOS, then every turn closed by end-of-turn (an
/// answer by its own generated ids, so that its keys and values are found in the cache).
struct Conversation {
    system: Option<String>,
    ids: Vec<u32>,
    answers: usize,
    bos: u32,
    eot: u32,
}

impl Conversation {
    fn new(tok: &Tokenizer, system: Option<String>) -> Self {
        Self {
            system,
            ids: vec![tok.bos],
            answers: 0,
            bos: tok.bos,
            eot: tok.eot,
        }
    }

    fn reset(&mut self) {
        self.ids = vec![self.bos];
        self.answers = 0;
    }

    /// The prompt for the user's next message: the conversation, the system prompt if this
    /// is the first turn, the message, and the assistant's cue.
    fn prompt(&self, tok: &Tokenizer, user: &str) -> Vec<u32> {
        let mut messages = Vec::new();
        if self.answers == 0
            && let Some(system) = &self.system
        {
            messages.push(ChatMessage {
                role: "system".into(),
                content: system.clone(),
            });
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: user.to_string(),
        });
        let mut ids = self.ids.clone();
        tok.append_chat(&mut ids, &messages);
        ids
    }

    /// The answer to `prompt` joins the conversation (a stopped answer too: it was shown).
    fn answered(&mut self, prompt: Vec<u32>, answer: &[u32]) {
        self.ids = prompt;
        self.ids.extend_from_slice(answer);
        self.ids.push(self.eot);
        self.answers += 1;
    }
}

/// Token counts and times over the session, for the closing line.
#[derive(Default)]
struct Totals {
    answers: usize,
    prompt_computed: usize,
    prompt_cached: usize,
    prompt_ms: f64,
    generated: usize,
    decode_ms: f64,
}

impl Totals {
    fn add(&mut self, out: &GenerateOutput) {
        self.answers += 1;
        self.prompt_computed += out.prompt_tokens - out.cached_prompt_tokens;
        self.prompt_cached += out.cached_prompt_tokens;
        self.prompt_ms += out.prompt_ms;
        self.generated += out.completion_tokens.saturating_sub(1);
        self.decode_ms += out.decode_ms;
    }

    fn closing_line(&self) -> String {
        format!(
            "[session: {} answers; prompt {} tokens computed at {:.1} tok/s, {} from the cache; \
             decode {} tokens at {:.1} tok/s]",
            self.answers,
            self.prompt_computed,
            rate(self.prompt_computed, self.prompt_ms),
            self.prompt_cached,
            self.generated,
            rate(self.generated, self.decode_ms),
        )
    }
}

fn rate(tokens: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        tokens as f64 / (ms / 1e3)
    } else {
        0.0
    }
}

/// The line after each answer: `[prompt 52 tokens: 12 computed at 310.2 tok/s, 40 cached |
/// answer 64 tokens at 25.3 tok/s]`, and why it ended if not by itself.
fn turn_line(out: &GenerateOutput) -> String {
    let computed = out.prompt_tokens - out.cached_prompt_tokens;
    let ended = match out.stop_reason {
        StopReason::Stop => "",
        StopReason::Length => ", cut at the token limit",
        StopReason::Cancelled => ", stopped",
        StopReason::Deadline => ", out of time",
        StopReason::GrammarLimit => ", at the grammar's limits",
    };
    format!(
        "[prompt {} tokens: {computed} computed at {:.1} tok/s, {} cached | answer {} tokens at {:.1} tok/s{ended}]",
        out.prompt_tokens,
        rate(computed, out.prompt_ms),
        out.cached_prompt_tokens,
        out.completion_tokens,
        rate(out.completion_tokens.saturating_sub(1), out.decode_ms),
    )
}

/// What a line typed at the prompt asks for.
#[derive(Debug, PartialEq)]
enum Input<'a> {
    Say(&'a str),
    Reset,
    System(Option<&'a str>),
    Exit,
    Help,
    Unknown(&'a str),
}

fn parse(line: &str) -> Option<Input<'_>> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let Some(command) = line.strip_prefix('/') else {
        return Some(Input::Say(line));
    };
    let (name, rest) = command
        .split_once(char::is_whitespace)
        .map_or((command, ""), |(n, r)| (n, r.trim()));
    Some(match name {
        "reset" | "clear" => Input::Reset,
        "system" => Input::System((!rest.is_empty()).then_some(rest)),
        "exit" | "quit" | "bye" => Input::Exit,
        "help" | "?" => Input::Help,
        _ => Input::Unknown(name),
    })
}

const HELP: &str = "/reset starts a new conversation, /system TEXT sets the system prompt \
(and starts a new conversation; /system alone removes it), /exit or Ctrl-D leaves; \
Ctrl-C stops an answer";

struct Chat {
    scheduler: Scheduler,
    conversation: Conversation,
    params: GenerateParams,
    totals: Totals,
    /// The interrupt of the answer being written, for the Ctrl-C handler.
    current: Arc<Mutex<Option<Interrupt>>>,
}

impl Chat {
    fn tokenizer(&self) -> &Tokenizer {
        self.scheduler.model().tokenizer()
    }

    /// Runs one line; `false` once the user asked to leave.
    fn handle(&mut self, input: Input<'_>, out: &mut dyn Write) -> Result<bool> {
        match input {
            Input::Say(text) => self.turn(text, out)?,
            Input::Reset => {
                self.conversation.reset();
                eprintln!("[new conversation]");
            }
            Input::System(text) => {
                self.conversation.system = text.map(str::to_string);
                self.conversation.reset();
                match text {
                    Some(_) => eprintln!("[system prompt set; new conversation]"),
                    None => eprintln!("[no system prompt; new conversation]"),
                }
            }
            Input::Exit => return Ok(false),
            Input::Help => eprintln!("{HELP}"),
            Input::Unknown(name) => eprintln!("unknown command /{name}: {HELP}"),
        }
        Ok(true)
    }

    /// One user message and its answer, streamed to `out`.
    fn turn(&mut self, text: &str, out: &mut dyn Write) -> Result<()> {
        let prompt = self.conversation.prompt(self.tokenizer(), text);
        let n_ctx = self.scheduler.model().n_ctx();
        let room = n_ctx.saturating_sub(prompt.len());
        if room == 0 {
            let hint = if self.conversation.answers > 0 {
                ": /reset to start a new conversation"
            } else {
                ""
            };
            bail!(
                "with this message the conversation is {} tokens, over the model's context of {n_ctx}{hint}",
                prompt.len()
            );
        }
        let mut params = self.params.clone();
        params.max_tokens = params.max_tokens.min(room);
        let interrupt = Interrupt::new();
        *lock(&self.current) = Some(interrupt.clone());
        let mut write_failed = None;
        let result = self.scheduler.generate_blocking(
            prompt.clone(),
            params,
            interrupt.clone(),
            &mut |piece, _| {
                if write_failed.is_none()
                    && let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush())
                {
                    // A closed output (`| head`) ends the answer.
                    write_failed = Some(e);
                    interrupt.cancel();
                }
            },
        );
        *lock(&self.current) = None;
        if let Some(e) = write_failed {
            return Err(e).context("writing the answer");
        }
        let output = result?;
        writeln!(out)?;
        out.flush()?;
        eprintln!("{}", turn_line(&output));
        self.totals.add(&output);
        self.conversation.answered(prompt, &output.token_ids);
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the chat until `/exit`, Ctrl-D or the end of standard input.
pub fn run(args: ChatArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let opts = LoadOptions {
        threads: args.threads,
        ..Default::default()
    };
    let (model, source) = crate::fetch::load_model(&rt, args.model.as_deref(), &opts)?;
    let model = Arc::new(model);
    let scheduler = Scheduler::new(
        model.clone(),
        SchedulerConfig {
            parallel: 1,
            // Room for the whole conversation: the next turn starts from all of it.
            prefix_cache_bytes: model.kv_bytes_per_token().saturating_mul(model.n_ctx()),
            // The reader is this process: an answer waits for a paused terminal.
            stall: Duration::from_secs(24 * 3600),
            ..Default::default()
        },
    );
    let conversation = Conversation::new(model.tokenizer(), args.system.clone());
    let mut chat = Chat {
        scheduler,
        conversation,
        params: GenerateParams {
            max_tokens: args.max_tokens,
            sampling: args.sampling.params(),
            // One user: every answer decodes alone, a draft can ride along.
            draft_max: bitnet_engine::generate::DEFAULT_DRAFT_MAX,
            ..Default::default()
        },
        totals: Totals::default(),
        current: Arc::new(Mutex::new(None)),
    };
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        interactive_loop(&rt, &mut chat, &source, model.threads())?;
    } else {
        let stdout = std::io::stdout();
        for line in std::io::stdin().lock().lines() {
            let line = line.context("reading standard input")?;
            if let Some(input) = parse(&line)
                && !chat.handle(input, &mut stdout.lock())?
            {
                break;
            }
        }
    }
    eprintln!("{}", chat.totals.closing_line());
    Ok(())
}

fn interactive_loop(
    rt: &tokio::runtime::Runtime,
    chat: &mut Chat,
    source: &str,
    threads: usize,
) -> Result<()> {
    use rustyline::error::ReadlineError;
    // Ctrl-C while an answer is written stops it. While a line is edited the terminal is in
    // raw mode and Ctrl-C reaches the editor as a key instead.
    // The handler is registered here, before the first line is read, not when the task
    // first runs.
    let mut sigint = rt
        .block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        })
        .context("watching Ctrl-C")?;
    let current = chat.current.clone();
    rt.spawn(async move {
        while sigint.recv().await.is_some() {
            if let Some(interrupt) = &*lock(&current) {
                interrupt.cancel();
            }
        }
    });
    let mut editor = rustyline::DefaultEditor::new().context("starting the line editor")?;
    println!(
        "bitnet chat: {source} ({} tokens of context, {threads} threads). {HELP}.",
        chat.scheduler.model().n_ctx()
    );
    loop {
        match editor.readline("> ") {
            Ok(line) => {
                let Some(input) = parse(&line) else { continue };
                let _ = editor.add_history_entry(line.trim());
                let result = chat.handle(input, &mut std::io::stdout().lock());
                match result {
                    Ok(true) => {}
                    Ok(false) => break,
                    // A turn the engine refused (the context is full): say so, keep the chat.
                    Err(e) => eprintln!("error: {e:#}"),
                }
            }
            Err(ReadlineError::Interrupted) => {
                eprintln!("(Ctrl-C stops an answer; /exit or Ctrl-D leaves)")
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading the line"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_messages_or_commands() {
        assert_eq!(parse("  hello  "), Some(Input::Say("hello")));
        assert_eq!(parse(""), None);
        assert_eq!(parse("   "), None);
        assert_eq!(parse("/reset"), Some(Input::Reset));
        assert_eq!(parse("/exit"), Some(Input::Exit));
        assert_eq!(
            parse("/system  Be brief. "),
            Some(Input::System(Some("Be brief.")))
        );
        assert_eq!(parse("/system"), Some(Input::System(None)));
        assert_eq!(parse("/nope x"), Some(Input::Unknown("nope")));
    }

    #[test]
    fn the_turn_line_counts_computed_and_cached_prompt_tokens() {
        let out = GenerateOutput {
            text: String::new(),
            token_ids: vec![1, 2, 3],
            prompt_tokens: 52,
            completion_tokens: 3,
            stop_reason: StopReason::Cancelled,
            prompt_ms: 100.0,
            decode_ms: 100.0,
            cached_prompt_tokens: 40,
            logprobs: Vec::new(),
            prompt_logprobs: Vec::new(),
            draft_tokens: 0,
            draft_accepted: 0,
        };
        assert_eq!(
            turn_line(&out),
            "[prompt 52 tokens: 12 computed at 120.0 tok/s, 40 cached | answer 3 tokens at 20.0 tok/s, stopped]"
        );
    }
}
