//! Key layout of the session table (SPEC 3), compatible with MongooseIM.
