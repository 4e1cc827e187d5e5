// lookalike's TypeScript client: `LookalikeClient`, and the generated wire types for anything it does not wrap.
export * from "./client";
export * as wire from "./gen/lookalike/v1/lookalike";
