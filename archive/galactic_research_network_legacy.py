"""RETIRED: `models/galactic_research_network.py` (tombstone; importing it raises ImportError).

What it was
    A research prototype of a galaxy/observatory network model written in plain torch: one
    `nn.Module` scoring how a network of observing sites should coordinate, trained and
    queried from notebooks and scripts.

Why it was retired
    - No serving contract: callers imported the module and called the network in-process;
      nothing defined inputs, outputs, errors or versions.
    - Pickle loading of untrusted weights (`torch.load` of whole objects), which executes
      arbitrary code from a checkpoint file.
    - No batching and no deadlines: one query at a time on whatever device was at hand.
    - No tests.
    - Hard-coded observing sites (names and coordinates in the source), so adding a site
      meant editing code.

What replaces it
    - galactic's Coordination service (`galactic.v1.Coordination`, `Coordinate` and the bidi
      `CoordinateStream`) served by `galacticd`, with dynamic batching and deadlines;
    - `engines/coordination`: the engine that runs the model behind that service;
    - `training/coordination`: the LightningModule and data module that train it and export
      exactly what the engine loads (safetensors, no pickle); sites come from configuration;
    - the `galactic_client` library: `Client(...).coordinate(request)` or the `galactic
      coordinate request.json` command.

See archive/MIGRATION.md for the step-by-step move.
"""

raise ImportError(
    "models/galactic_research_network.py was retired; use galactic's Coordination service "
    "(engines/coordination, training/coordination) through galactic_client: "
    "galactic_client.Client(target).coordinate(request). See archive/MIGRATION.md."
)
