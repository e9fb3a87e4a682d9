"""Integrations of memstate_sql with agent frameworks (each behind its own extra).

* `memstate_sql.integrations.langgraph` (extra ``langgraph``): LangGraph checkpointers and a LangGraph `BaseStore`.
"""
