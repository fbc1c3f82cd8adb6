"""The engine at run time: one MappingRunner per mapping, its lanes, the batch processor that
carries out the planner's actions, and the function runtime that invokes handlers."""
