use gpt2_model::ModelError;

/// What went wrong, naming the file and, for data errors, the line.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}:{line}: {message}")]
    Data {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Corpus(#[from] gpt2_corpus::CorpusError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Generate(#[from] gpt2_generate::GenerateError),
}

pub type Result<T> = std::result::Result<T, EvalError>;

impl EvalError {
    pub fn data(path: &str, line: usize, message: impl Into<String>) -> EvalError {
        EvalError::Data {
            path: path.to_string(),
            line,
            message: message.into(),
        }
    }

    pub fn file(path: &str, message: impl Into<String>) -> EvalError {
        EvalError::File {
            path: path.to_string(),
            message: message.into(),
        }
    }
}
