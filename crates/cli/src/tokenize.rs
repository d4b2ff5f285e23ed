use crate::input::read_text;
use anyhow::Result;
use gpt2_model::Tokenizer;

#[derive(clap::Args)]
pub struct Args {
    /// Text file to tokenize; `-` or nothing reads stdin.
    file: Option<String>,
    /// Print a JSON array of integers.
    #[arg(long)]
    json: bool,
    /// Recognise `<|endoftext|>` in the text as token 50256.
    #[arg(long)]
    special: bool,
}

pub fn run(a: Args) -> Result<()> {
    let text = read_text(a.file.as_deref())?;
    let t = Tokenizer::gpt2();
    let ids = if a.special {
        t.encode_with_special(&text)?
    } else {
        t.encode(&text)?
    };
    if a.json {
        println!("{}", serde_json::to_string(&ids)?);
    } else {
        let words: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!("{}", words.join(" "));
    }
    Ok(())
}
