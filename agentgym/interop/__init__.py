"""Interoperability with other RL stacks.

- :mod:`.openenv_server` / :mod:`.openenv_client`: any registered environment served the OpenEnv
  way (reset / step / state over HTTP), and an OpenEnv server used as an agentgym environment;
- :mod:`.trl_env`: agentgym environments in TRL's GRPOTrainer (``environment_factory``);
- :mod:`.mcp_tools`: an MCP server's tools as an environment's tools.

Each module imports its peer package (openenv-core, trl, mcp: the ``interop`` extra) only when
used, so ``import agentgym.interop`` stays light.
"""
