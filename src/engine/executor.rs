//! The executor: runs one parsed [`Flow`] and produces the events of docs/neuralabs.md section 4.
//!
//! Design: a strict depth-first walk from `start_element` along control connections
//! (`control`/`both`) in connection-list order. Before an element runs, each control-upstream
//! element that has not run yet runs first with `backtracking: true` (recursively) and does not
//! continue downstream. An element runs at most once; data-only connections never make an element
//! run. Inputs are the element's initial inputs overlaid with the outputs named by its data
//! connections, then schema defaults; they are type-checked against `input_schema`.
//!
//! Branching (`case`, `flow_select`): only the chosen control children run; the others are
//! *pruned* and never run, not even by backtracking (an element reached only by backtracking
//! through a pruned element is pruned as well). See [`super::elements`] for how children are
//! matched to cases.
//!
//! Failure: exactly one `element_error` (for the failing element) and one `flow_error`.
//! Cancellation (the socket closed, the engine shuts down) stops the walk before the next element
//! or LLM chunk, silently. Events go to the session's socket writer through a bounded channel;
//! if the writer is gone the run stops.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{Map, Value, json};

use super::elements;
use super::flow::{Flow, Node, matches_type, preview, py_repr};
use super::run::{Emitter, Failure, Outcome, Route, RunEnv, Stop, epoch_secs};
use super::stats::EngineStats;

/// One run of a flow.
pub struct Executor {
    flow: Flow,
    initial: Map<String, Value>,
    env: RunEnv,
    emitter: Emitter,
    stats: Arc<EngineStats>,
    order: Vec<String>,
    outputs: Map<String, Value>,
    in_progress: HashSet<String>,
    pruned: HashSet<String>,
    final_output: Value,
    started: Instant,
}

type Step<'a> = Pin<Box<dyn Future<Output = Result<bool, Stop>> + Send + 'a>>;

impl Executor {
    pub fn new(
        flow: Flow,
        initial: Map<String, Value>,
        env: RunEnv,
        emitter: Emitter,
        stats: Arc<EngineStats>,
    ) -> Executor {
        Executor {
            flow,
            initial,
            env,
            emitter,
            stats,
            order: Vec::new(),
            outputs: Map::new(),
            in_progress: HashSet::new(),
            pruned: HashSet::new(),
            final_output: Value::Object(Map::new()),
            started: Instant::now(),
        }
    }

    /// Run the flow to its terminal event (`flow_completed` or `flow_error`), or until cancelled.
    pub async fn run(mut self) {
        let flow_id = self.emitter.flow_id().to_owned();
        let started = self
            .emitter
            .emit(
                "flow_started",
                json!({"flow_id": flow_id, "start_time": epoch_secs()}),
            )
            .await;
        if started.is_ok() {
            let start = self.flow.start_element.clone();
            let result = self.visit(start, false).await;
            let execution_time = self.started.elapsed().as_secs_f64();
            let _ = match result {
                Ok(_) => {
                    let data = json!({
                        "flow_id": flow_id,
                        "execution_order": self.order,
                        "element_outputs": self.outputs,
                        "final_output": self.final_output,
                        "execution_time": execution_time,
                    });
                    self.emitter.emit("flow_completed", data).await
                }
                Err(Stop::Failed(error)) => {
                    let data = json!({
                        "flow_id": flow_id,
                        "error": error,
                        "partial_execution_order": self.order,
                        "partial_outputs": self.outputs,
                        "execution_time": execution_time,
                    });
                    self.emitter.emit("flow_error", data).await
                }
                Err(Stop::Cancelled) => Ok(()),
            };
        }
        tracing::info!(
            flow_id,
            elements = self.order.len(),
            execution_time = self.started.elapsed().as_secs_f64(),
            "flow ended"
        );
        self.stats.runs_ended.fetch_add(1, Ordering::SeqCst);
    }

    fn has_run(&self, id: &str) -> bool {
        self.outputs.contains_key(id)
    }

    /// Visit `id`: run it (after its missing control-upstream elements) and, unless
    /// `backtracking`, its control children. `Ok(false)` means the element was pruned.
    fn visit(&mut self, id: String, backtracking: bool) -> Step<'_> {
        Box::pin(async move {
            if self.emitter.cancelled() {
                return Err(Stop::Cancelled);
            }
            if self.has_run(&id) || self.in_progress.contains(&id) {
                return Ok(true);
            }
            if self.pruned.contains(&id) {
                return Ok(false);
            }
            self.in_progress.insert(id.clone());
            let mut upstream: Vec<String> = Vec::new();
            for c in &self.flow.connections {
                if c.to == id && c.kind.is_control() && !upstream.contains(&c.from) {
                    upstream.push(c.from.clone());
                }
            }
            for up in upstream {
                if self.has_run(&up) || self.in_progress.contains(&up) {
                    continue;
                }
                let ran = !self.pruned.contains(&up) && self.visit(up, true).await?;
                if !ran && backtracking {
                    self.in_progress.remove(&id);
                    self.pruned.insert(id);
                    return Ok(false);
                }
            }
            let node =
                self.flow.node(&id).cloned().ok_or_else(|| {
                    Stop::Failed(format!("element `{id}` is not part of the flow"))
                })?;
            let route = self.run_element(&node, backtracking).await?;
            self.in_progress.remove(&id);
            if backtracking {
                return Ok(true);
            }
            let mut children: Vec<String> = Vec::new();
            for c in &self.flow.connections {
                if c.from == id && c.kind.is_control() && !children.contains(&c.to) {
                    children.push(c.to.clone());
                }
            }
            if let Some(route) = route {
                let chosen = self.choose(&children, &route);
                for child in &children {
                    if !chosen.contains(child) && !self.has_run(child) {
                        self.pruned.insert(child.clone());
                    }
                }
                children = chosen;
            }
            for child in children {
                self.visit(child, false).await?;
            }
            Ok(true)
        })
    }

    /// The children a branching element's route selects (rule in [`super::elements`]).
    fn choose(&self, children: &[String], route: &Route) -> Vec<String> {
        let label_of = |id: &String| {
            let name = self
                .flow
                .node(id)
                .map(|n| n.name.clone())
                .unwrap_or_default();
            (id.clone(), name)
        };
        let labels: Vec<(String, String)> = children.iter().map(label_of).collect();
        let by_label = labels
            .iter()
            .any(|(id, name)| route.keys.iter().any(|k| k == id || k == name));
        if by_label {
            let wanted = route.chosen.as_deref().unwrap_or("default");
            labels
                .into_iter()
                .filter(|(id, name)| id == wanted || name == wanted)
                .map(|(id, _)| id)
                .collect()
        } else {
            let index = match &route.chosen {
                Some(k) => route.keys.iter().position(|key| key == k),
                None => Some(route.keys.len()),
            };
            index
                .and_then(|i| children.get(i).cloned())
                .into_iter()
                .collect()
        }
    }

    fn gather_inputs(&self, node: &Node) -> Result<Map<String, Value>, String> {
        let mut inputs = match self.initial.get(&node.id) {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        for c in &self.flow.connections {
            if c.to != node.id || !c.kind.is_data() {
                continue;
            }
            let (Some((from, output)), Some((_, input))) = (&c.from_output, &c.to_input) else {
                continue;
            };
            if let Some(v) = self.outputs.get(from).and_then(|o| o.get(output)) {
                inputs.insert(input.clone(), v.clone());
            }
        }
        for (name, spec) in &node.input_schema {
            let missing = inputs.get(name).is_none_or(Value::is_null);
            if missing && let Some(default) = spec.get("default") {
                inputs.insert(name.clone(), default.clone());
            }
        }
        for (name, value) in &inputs {
            let ty = node
                .input_schema
                .get(name)
                .and_then(|s| s.get("type"))
                .and_then(Value::as_str);
            if let Some(ty) = ty
                && !value.is_null()
                && !matches_type(value, ty)
            {
                let shown = preview(py_repr(value), 200);
                return Err(format!(
                    "Input '{name}': Value '{shown}' does not match expected type '{ty}'"
                ));
            }
        }
        for (name, spec) in &node.input_schema {
            let required = spec
                .get("required")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if required
                && inputs.get(name).is_none_or(Value::is_null)
                && node.kind != Some("chat_input")
            {
                return Err(format!("Required input '{name}' is missing"));
            }
        }
        Ok(inputs)
    }

    /// Run one element: `element_started`, `processing`, its own events, then
    /// `element_completed` (or one `element_error`).
    async fn run_element(
        &mut self,
        node: &Node,
        backtracking: bool,
    ) -> Result<Option<Route>, Stop> {
        let flow_id = self.emitter.flow_id().to_owned();
        let head = |extra: Map<String, Value>| {
            let mut data = Map::new();
            data.insert("flow_id".into(), flow_id.clone().into());
            data.insert("element_id".into(), node.id.clone().into());
            data.insert("element_type".into(), node.type_name.clone().into());
            data.insert("element_name".into(), node.name.clone().into());
            data.extend(extra);
            data.insert("backtracking".into(), backtracking.into());
            Value::Object(data)
        };
        self.emitter
            .emit("element_started", head(Map::new()))
            .await?;
        self.stats.elements_started.fetch_add(1, Ordering::SeqCst);
        if let Some(message) = elements::processing_message(node) {
            let data = json!({"element_id": node.id, "message": message});
            self.emitter.emit("processing", data).await?;
        }
        let result = match self.gather_inputs(node) {
            Ok(inputs) => elements::run(node, inputs, &self.env, &self.emitter).await,
            Err(e) => Err(Failure::Element(e)),
        };
        match result {
            Ok(Outcome { outputs, route }) => {
                let mut extra = Map::new();
                extra.insert("outputs".into(), Value::Object(outputs.clone()));
                self.emitter.emit("element_completed", head(extra)).await?;
                if node.kind == Some("end") {
                    self.final_output = Value::Object(outputs.clone());
                }
                self.order.push(node.id.clone());
                self.outputs.insert(node.id.clone(), Value::Object(outputs));
                Ok(route)
            }
            Err(Failure::Cancelled) => Err(Stop::Cancelled),
            Err(Failure::Element(error)) => {
                let mut extra = Map::new();
                extra.insert("error".into(), error.clone().into());
                self.emitter.emit("element_error", head(extra)).await?;
                Err(Stop::Failed(error))
            }
        }
    }
}
