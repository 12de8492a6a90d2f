//! Mock LLM provider server for async-batch-llm (built out by the providers issue).
