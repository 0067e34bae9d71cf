//! Declaring a participant (its name and its commands) and running it.

mod runtime;
mod settings;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use settings::Settings;

use crate::command::{Command, CommandKind};
use crate::outcome::{CheckBackAnswer, Outcome};
use crate::Error;

/// Any error a handler returns; it becomes a `retry` reply.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a command could not be handed to its handler.
type DecodeError = serde_json::Error;

/// A handler with its payload type erased: decodes the payload, then returns the handler's future.
type ErasedHandler = Arc<
    dyn Fn(Command<Value>) -> Result<BoxFuture<'static, Result<Outcome, BoxError>>, DecodeError>
        + Send
        + Sync,
>;

pub(crate) type Handlers = HashMap<(CommandKind, String), ErasedHandler>;

/// A participant: a name (its queue is `{ns}.participant.{name}`) and the handlers of its commands.
///
/// Build one with [`Participant::builder`], then [`run_until`](Participant::run_until) a shutdown
/// signal or [`spawn`](Participant::spawn) it. See the [crate documentation](crate) for an example.
pub struct Participant {
    name: String,
    settings: Settings,
    handlers: Arc<Handlers>,
}

/// Declares a [`Participant`].
pub struct ParticipantBuilder {
    name: String,
    settings: Settings,
    handlers: Handlers,
    duplicate: Option<(CommandKind, String)>,
}

impl Participant {
    /// Starts declaring the participant `name` with [`Settings::default`].
    pub fn builder(name: impl Into<String>) -> ParticipantBuilder {
        ParticipantBuilder {
            name: name.into(),
            settings: Settings::default(),
            handlers: HashMap::new(),
            duplicate: None,
        }
    }

    /// The participant's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Consumes commands until `shutdown` completes, reconnecting whenever the broker goes away.
    /// On shutdown it stops taking commands, lets the handlers under way finish (replying and
    /// acknowledging as usual), and closes the connection.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let token = CancellationToken::new();
        let (consuming, _) = watch::channel(false);
        let run = runtime::run(self, token.clone(), consuming);
        tokio::pin!(run);
        tokio::select! {
            () = &mut run => return,
            () = shutdown => token.cancel(),
        }
        run.await;
    }

    /// Runs the participant on a tokio task; the handle stops it.
    pub fn spawn(self) -> ParticipantHandle {
        let token = CancellationToken::new();
        let (consuming_tx, consuming) = watch::channel(false);
        let task = tokio::spawn(runtime::run(self, token.clone(), consuming_tx));
        ParticipantHandle {
            token,
            consuming,
            task,
        }
    }
}

impl ParticipantBuilder {
    /// Replaces the settings.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Handles the action command `name`. The step payload is decoded as `P` (use
    /// [`serde_json::Value`] to take it as it is); a payload that does not decode is rejected to
    /// the dead-letter queue. An `Err` or a panic becomes a `retry` reply.
    pub fn action<P, F, Fut, E>(self, name: &str, handler: F) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        F: Fn(Command<P>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Outcome, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.handler(CommandKind::Action, name, handler)
    }

    /// Handles the compensation command `name`, like [`action`](Self::action). A compensation must
    /// eventually succeed: `failure` is retried by the coordinator like `retry`.
    pub fn compensation<P, F, Fut, E>(self, name: &str, handler: F) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        F: Fn(Command<P>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Outcome, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.handler(CommandKind::Compensation, name, handler)
    }

    /// Answers check-backs: the coordinator's `check` commands about two-phase sagas this
    /// participant initiated (contract, section 5). The handler says whether the initiator's local
    /// transaction committed; `initiator::half_message::check_back_handler` is a ready one. An `Err`
    /// or a panic answers nothing decisive (the coordinator asks again after its backoff).
    pub fn check_back<F, Fut, E>(self, handler: F) -> Self
    where
        F: Fn(Command<Value>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<CheckBackAnswer, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.handler(
            CommandKind::Check,
            "check",
            move |command: Command<Value>| {
                let answer = handler(command);
                async move { answer.await.map(Outcome::CheckBack) }
            },
        )
    }

    fn handler<P, F, Fut, E>(mut self, kind: CommandKind, name: &str, handler: F) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        F: Fn(Command<P>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Outcome, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let erased: ErasedHandler = Arc::new(move |command: Command<Value>| {
            let payload: P = serde_json::from_value(command.payload.clone())?;
            let future = handler(command.with_payload(payload));
            Ok(async move { future.await.map_err(Into::into) }.boxed())
        });
        let key = (kind, name.to_string());
        if self.handlers.insert(key.clone(), erased).is_some() {
            self.duplicate.get_or_insert(key);
        }
        self
    }

    /// Checks the declaration.
    pub fn build(self) -> Result<Participant, Error> {
        if !valid_name(&self.name) {
            return Err(Error::Declaration(format!(
                "participant name {:?} must match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}$",
                self.name
            )));
        }
        if let Some((kind, name)) = self.duplicate {
            return Err(Error::Declaration(format!(
                "the {kind} {name:?} has two handlers"
            )));
        }
        if let Some((_, name)) = self.handlers.keys().find(|(_, n)| !valid_name(n)) {
            return Err(Error::Declaration(format!(
                "command name {name:?} must match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}$"
            )));
        }
        if self.handlers.is_empty() {
            return Err(Error::Declaration(format!(
                "participant {:?} handles no command",
                self.name
            )));
        }
        self.settings.validate()?;
        Ok(Participant {
            name: self.name,
            settings: self.settings,
            handlers: Arc::new(self.handlers),
        })
    }
}

/// The contract's name rule (section 2).
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A participant running on a task.
pub struct ParticipantHandle {
    token: CancellationToken,
    consuming: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ParticipantHandle {
    /// Waits until the participant consumes its queue (again, after a reconnection).
    pub async fn consuming(&mut self) {
        let _ = self.consuming.wait_for(|c| *c).await;
    }

    /// Whether the participant is consuming right now.
    pub fn is_consuming(&self) -> bool {
        *self.consuming.borrow()
    }

    /// Stops taking commands, waits for the handlers under way to reply, and closes the connection.
    pub async fn shutdown(self) {
        self.token.cancel();
        if let Err(e) = self.task.await {
            log::error!("the participant task ended abnormally: {e}");
        }
    }
}
