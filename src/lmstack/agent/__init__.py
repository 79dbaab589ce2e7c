"""The production agent runtime: model clients, tools + sandbox, memory, the journal (durable runs),
the loop, monitors and tracing. `lmstack agent run|resume|approve|list|trace` is in `commands.py`.

    client.py          ModelClient, OpenAIClient (any OpenAI-compatible endpoint), retries
    engine_client.py   EngineClient: our engine in-process
    tools.py           @tool, validation, timeouts, retries, idempotency keys
    builtin_tools.py   calculator, python (sandboxed), workspace files, memory search/save
    sandbox.py         subprocess with namespaces, read-only mounts, rlimits, no secrets
    memory.py          long-term memories (FTS5/BM25, optional embeddings); context.py: context policy
    journal.py         write-ahead journal of model and tool calls; store.py: tables and run records
    runtime.py         the loop; budget.py: budgets and prices; settings.py: AgentConfig
    monitors/          grounding, action claims, uncertainty, tool hallucination, self-consistency
    monitor_data.py    labelled steps for measuring the monitors
    tracing.py         spans, the trace tree, OpenTelemetry JSON
    testing/           the scripted OpenAI-compatible server for tests
"""
