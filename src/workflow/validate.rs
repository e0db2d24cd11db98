//! Validation of a normalized flow, before any engine contact.
//!
//! Owns the semantic checks of a flow: the start element, connection endpoints and the
//! outputs/inputs they name, control cycles, reachability from the start (backtracking
//! included), a reachable `end`, unfed required inputs, and the parameters of known elements.
//! Every finding points into the *stored* document (the source map built by `normalize`).
//! All graph work is linear (hash maps, iterative traversals): no recursion on input data.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::{Map, Value};

use super::finding::{Finding, Severity};
use super::normalize::{ElementType, NodeInfo, Normalized};
use super::stored::{describe, push, push_index};

struct Out(Vec<Finding>);

impl Out {
    fn error(&mut self, pointer: impl Into<String>, message: String) {
        self.0.push(Finding {
            pointer: pointer.into(),
            message,
            severity: Severity::Error,
        });
    }
    fn warning(&mut self, pointer: impl Into<String>, message: String) {
        self.0.push(Finding {
            pointer: pointer.into(),
            message,
            severity: Severity::Warning,
        });
    }
}

/// Every semantic finding of `n` (its structural findings are not repeated), in a stable order:
/// start element, parameters, connections, cycles, required inputs, then the warnings.
pub fn validate(n: &Normalized) -> Vec<Finding> {
    let mut out = Out(Vec::new());
    if n.shape.is_none() {
        return out.0;
    }
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(n.nodes.len());
    for (i, node) in n.nodes.iter().enumerate() {
        index.entry(node.id.as_str()).or_insert(i);
    }

    let start = match &n.start {
        Some(s) => match index.get(s.as_str()) {
            Some(&i) => Some(i),
            None => {
                out.error(
                    n.start_ptr.clone(),
                    format!("start_element '{s}' is not an element of this workflow"),
                );
                None
            }
        },
        None => None,
    };

    for node in &n.nodes {
        parameters(node, &mut out);
    }

    // Connections: endpoints, then what the data ones name.
    let mut succ: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n.nodes.len()];
    let mut pred: Vec<Vec<usize>> = vec![Vec::new(); n.nodes.len()];
    let mut fed: HashSet<(usize, &str)> = HashSet::new();
    for (k, c) in n.conns.iter().enumerate() {
        let from = index.get(c.from.as_str()).copied();
        let to = index.get(c.to.as_str()).copied();
        if from.is_none() {
            out.error(
                c.from_ptr.clone(),
                format!(
                    "this connection starts at '{}', which is not an element of this workflow",
                    c.from
                ),
            );
        }
        if to.is_none() {
            out.error(
                c.to_ptr.clone(),
                format!(
                    "this connection ends at '{}', which is not an element of this workflow",
                    c.to
                ),
            );
        }
        if let Some(fo) = &c.from_output
            && let Some(name) =
                endpoint_name(fo, &c.from, &c.from_output_ptr, "from_output", &mut out)
            && let Some(f) = from
        {
            let node = &n.nodes[f];
            if !node.outputs.is_empty() && !node.outputs.contains_key(name) {
                out.error(
                    c.from_output_ptr.clone(),
                    format!(
                        "element {} has no output '{name}' (its outputs: {})",
                        node.label(),
                        names(&node.outputs)
                    ),
                );
            }
        }
        if let Some(ti) = &c.to_input
            && let Some(name) = endpoint_name(ti, &c.to, &c.to_input_ptr, "to_input", &mut out)
            && let Some(t) = to
        {
            let node = &n.nodes[t];
            if !node.inputs.is_empty() && !node.inputs.contains_key(name) {
                out.error(
                    c.to_input_ptr.clone(),
                    format!(
                        "element {} has no input '{name}' (its inputs: {})",
                        node.label(),
                        names(&node.inputs)
                    ),
                );
            }
            if c.kind.is_data() {
                fed.insert((t, name));
            }
        }
        if let (Some(f), Some(t)) = (from, to)
            && c.kind.is_control()
        {
            succ[f].push((t, k));
            pred[t].push(f);
        }
    }

    cycles(n, &succ, &mut out);

    // Reachability: forward over control connections from the start, then backwards
    // (an element feeding a reachable one through a control connection runs by backtracking).
    let reachable = start.map(|s| reachable(s, &succ, &pred));
    for (i, node) in n.nodes.iter().enumerate() {
        if reachable.as_ref().is_some_and(|r| !r[i]) {
            continue;
        }
        match node.kind {
            None
            | Some(ElementType::Start | ElementType::ChatInput | ElementType::ContextHistory) => {
                continue;
            }
            Some(_) => {}
        }
        for (input, decl) in &node.inputs {
            let required = decl.get("required").and_then(Value::as_bool) == Some(true);
            let has_default = decl.get("default").is_some_and(|d| !d.is_null());
            if required && !has_default && !fed.contains(&(i, input.as_str())) {
                let ptr = node
                    .input_ptrs
                    .get(input)
                    .cloned()
                    .unwrap_or_else(|| node.ptr.clone());
                out.error(
                    ptr,
                    format!(
                        "the required input '{input}' of element {} is not fed by any data connection",
                        node.label()
                    ),
                );
            }
        }
    }

    if let (Some(s), Some(reachable)) = (start, reachable) {
        for (i, node) in n.nodes.iter().enumerate() {
            if !reachable[i] {
                out.warning(
                    node.ptr.clone(),
                    format!(
                        "element {} never runs: no control connection leads to it from the start element '{}'",
                        node.label(),
                        n.nodes[s].id
                    ),
                );
            }
        }
        let end_reachable = n
            .nodes
            .iter()
            .enumerate()
            .any(|(i, node)| reachable[i] && node.kind == Some(ElementType::End));
        if !end_reachable {
            out.warning(
                n.start_ptr.clone(),
                "no end element is reachable from the start element, so a run produces no final_output"
                    .to_owned(),
            );
        }
    }
    out.0
}

/// `"<id>:<name>"` → `name`, when `id` is the connection's endpoint; else a finding.
fn endpoint_name<'a>(
    text: &'a str,
    id: &str,
    ptr: &str,
    field: &str,
    out: &mut Out,
) -> Option<&'a str> {
    if let Some(name) = text
        .strip_prefix(id)
        .and_then(|rest| rest.strip_prefix(':'))
    {
        return Some(name);
    }
    match text.split_once(':') {
        Some((other, _)) => out.error(
            ptr.to_owned(),
            format!(
                "{field} '{text}' names element '{other}', but the connection {} '{id}'",
                if field == "from_output" {
                    "starts at"
                } else {
                    "ends at"
                }
            ),
        ),
        None => out.error(
            ptr.to_owned(),
            format!("{field} '{text}' must look like '{id}:<name>'"),
        ),
    }
    None
}

/// How many declared names a message lists before "…" (keeps messages short on huge schemas).
const LISTED_NAMES: usize = 10;

fn names(schema: &Map<String, Value>) -> String {
    let mut text = schema
        .keys()
        .take(LISTED_NAMES)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if schema.len() > LISTED_NAMES {
        text.push_str(", …");
    }
    text
}

fn reachable(start: usize, succ: &[Vec<(usize, usize)>], pred: &[Vec<usize>]) -> Vec<bool> {
    let mut forward = vec![false; succ.len()];
    let mut queue = VecDeque::from([start]);
    forward[start] = true;
    while let Some(i) = queue.pop_front() {
        for &(j, _) in &succ[i] {
            if !forward[j] {
                forward[j] = true;
                queue.push_back(j);
            }
        }
    }
    let mut all = forward.clone();
    let mut stack: Vec<usize> = (0..succ.len()).filter(|&i| forward[i]).collect();
    while let Some(i) = stack.pop() {
        for &j in &pred[i] {
            if !all[j] {
                all[j] = true;
                stack.push(j);
            }
        }
    }
    all
}

/// Report every strongly connected component of the control graph that holds a cycle, naming
/// one cycle through its first element (in node order). Iterative Tarjan.
fn cycles(n: &Normalized, succ: &[Vec<(usize, usize)>], out: &mut Out) {
    let len = succ.len();
    let mut comp = vec![usize::MAX; len];
    let mut idx = vec![usize::MAX; len];
    let mut low = vec![0usize; len];
    let mut on_stack = vec![false; len];
    let mut stack = Vec::new();
    let mut next = 0usize;
    let mut comps = 0usize;
    for root in 0..len {
        if idx[root] != usize::MAX {
            continue;
        }
        let mut call: Vec<(usize, usize)> = vec![(root, 0)];
        idx[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut e)) = call.last_mut() {
            if *e < succ[v].len() {
                let (w, _) = succ[v][*e];
                *e += 1;
                if idx[w] == usize::MAX {
                    idx[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    call.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(idx[w]);
                }
            } else {
                call.pop();
                if let Some(&(parent, _)) = call.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == idx[v] {
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        comp[w] = comps;
                        if w == v {
                            break;
                        }
                    }
                    comps += 1;
                }
            }
        }
    }
    // Members per component, in node order; a component has a cycle if it has two members or
    // a self-loop.
    let mut first_of: Vec<Option<usize>> = vec![None; comps];
    let mut size = vec![0usize; comps];
    for v in 0..len {
        size[comp[v]] += 1;
        first_of[comp[v]].get_or_insert(v);
    }
    let mut firsts: Vec<usize> = first_of.into_iter().flatten().collect();
    firsts.sort_unstable();
    for s in firsts {
        let c = comp[s];
        let self_loop = succ[s].iter().find(|(w, _)| *w == s);
        if size[c] < 2 && self_loop.is_none() {
            continue;
        }
        if let Some(&(_, k)) = self_loop {
            let id = &n.nodes[s].id;
            out.error(
                n.conns[k].ptr.clone(),
                format!("control connections form a cycle: {id} → {id}"),
            );
            continue;
        }
        // Shortest path back to s inside the component (BFS with parent links).
        let mut parent: HashMap<usize, (usize, usize)> = HashMap::new();
        let mut queue = VecDeque::from([s]);
        let mut closing = None;
        'bfs: while let Some(v) = queue.pop_front() {
            for &(w, k) in &succ[v] {
                if comp[w] != c {
                    continue;
                }
                if w == s {
                    closing = Some((v, k));
                    break 'bfs;
                }
                if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(w) {
                    e.insert((v, k));
                    queue.push_back(w);
                }
            }
        }
        let Some((last, k)) = closing else { continue };
        let mut path = vec![s];
        let mut v = last;
        while v != s {
            path.push(v);
            match parent.get(&v) {
                Some(&(p, _)) => v = p,
                None => break,
            }
        }
        path[1..].reverse();
        path.push(s);
        let text: Vec<&str> = path.iter().map(|&v| n.nodes[v].id.as_str()).collect();
        out.error(
            n.conns[k].ptr.clone(),
            format!("control connections form a cycle: {}", text.join(" → ")),
        );
    }
}

const COMPARE: [&str; 7] = ["==", "!=", ">", "<", ">=", "<=", "in"];

/// Parameter checks of the known elements whose parameters the engine interprets.
fn parameters(node: &NodeInfo, out: &mut Out) {
    let ptr_of = |key: &str| {
        node.param_ptrs
            .get(key)
            .cloned()
            .unwrap_or_else(|| push(&node.params_ptr, key))
    };
    let label = node.label();
    match node.kind {
        Some(ElementType::Case) => {
            let Some(cases) = node.params.get("cases") else {
                out.error(
                    ptr_of("cases"),
                    format!(
                        "case element {label} needs parameters.cases: a list of {{\"<case id>\": {{\"variable1\", \"variable2\", \"compare\"}}}}"
                    ),
                );
                return;
            };
            let ptr = ptr_of("cases");
            let Some(cases) = cases.as_array() else {
                out.error(
                    ptr,
                    format!(
                        "parameters.cases of element {label} must be a list, not {}",
                        describe(cases)
                    ),
                );
                return;
            };
            for (i, case) in cases.iter().enumerate() {
                let case_ptr = push_index(&ptr, i);
                let single = case.as_object().filter(|m| m.len() == 1);
                let Some((case_id, cond)) = single.and_then(|m| m.iter().next()) else {
                    out.error(
                        case_ptr,
                        format!(
                            "case {i} of element {label} must be an object with exactly one key, the case id"
                        ),
                    );
                    continue;
                };
                let cond_ptr = push(&case_ptr, case_id);
                let Some(cond) = cond.as_object() else {
                    out.error(
                        cond_ptr,
                        format!(
                            "case '{case_id}' of element {label} must be an object {{variable1, variable2, compare}}"
                        ),
                    );
                    continue;
                };
                match cond.get("variable1") {
                    Some(Value::String(s)) if !s.is_empty() => {}
                    _ => out.error(
                        push(&cond_ptr, "variable1"),
                        format!(
                            "case '{case_id}' of element {label} needs variable1: the name of the variable to test"
                        ),
                    ),
                }
                if cond.get("variable2").is_none() {
                    out.error(
                        push(&cond_ptr, "variable2"),
                        format!(
                            "case '{case_id}' of element {label} needs variable2: the value to compare with"
                        ),
                    );
                }
                match cond.get("compare").and_then(Value::as_str) {
                    Some(c) if COMPARE.contains(&c) => {}
                    other => out.error(
                        push(&cond_ptr, "compare"),
                        format!(
                            "case '{case_id}' of element {label} has compare {}; use one of {}",
                            other.map_or_else(|| "missing".to_owned(), |c| format!("'{c}'")),
                            COMPARE.join(" ")
                        ),
                    ),
                }
            }
        }
        Some(ElementType::Selector) => match node.params.get("key") {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => out.error(
                ptr_of("key"),
                format!(
                    "selector element {label} needs parameters.key: a non-empty path like 'user.name' or 'items[0]'"
                ),
            ),
        },
        Some(ElementType::ChatInput) => {
            for key in ["max_length", "min_length"] {
                non_negative_int(node, key, &ptr_of(key), out);
            }
            let min = node.params.get("min_length").and_then(Value::as_u64);
            let max = node.params.get("max_length").and_then(Value::as_u64);
            if let (Some(min), Some(max)) = (min, max)
                && min > max
            {
                out.error(
                    ptr_of("min_length"),
                    format!(
                        "element {label} has min_length {min} greater than max_length {max}: no message can pass"
                    ),
                );
            }
        }
        Some(ElementType::ContextHistory) => {
            non_negative_int(node, "max_messages", &ptr_of("max_messages"), out);
            if let Some(f) = node.params.get("format") {
                let ok = f
                    .as_str()
                    .is_some_and(|f| ["full", "text_only", "structured"].contains(&f));
                if !ok {
                    out.error(
                        ptr_of("format"),
                        format!(
                            "parameters.format of element {label} must be one of full, text_only, structured"
                        ),
                    );
                }
            }
        }
        Some(ElementType::LlmText | ElementType::LlmStructured) => {
            if let Some(t) = node.params.get("temperature")
                && !t.is_number()
            {
                out.error(
                    ptr_of("temperature"),
                    format!("parameters.temperature of element {label} must be a number"),
                );
            }
            if let Some(m) = node.params.get("max_tokens")
                && m.as_u64().is_none_or(|m| m == 0)
            {
                out.error(
                    ptr_of("max_tokens"),
                    format!("parameters.max_tokens of element {label} must be a positive integer"),
                );
            }
        }
        _ => {}
    }
}

fn non_negative_int(node: &NodeInfo, key: &str, ptr: &str, out: &mut Out) {
    if let Some(v) = node.params.get(key)
        && v.as_u64().is_none()
    {
        out.error(
            ptr.to_owned(),
            format!(
                "parameters.{key} of element {} must be a non-negative integer",
                node.label()
            ),
        );
    }
}
