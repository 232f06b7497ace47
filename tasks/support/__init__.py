"""agentgym/Support-v0: explain a back-office order record to a customer (a verbal reward)."""
