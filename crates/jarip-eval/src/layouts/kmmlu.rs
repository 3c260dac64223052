//! KMMLU (`HAERAE-HUB/KMMLU` CSV: question, answer, A, B, C, D, Category, Human Accuracy), as
//! lm-evaluation-harness's default `kmmlu` task renders it: the question and lettered options,
//! then `정답：` (full-width colon), scored on ` A`…` D`. The answer column is 1-based.

use super::{letters, mc, multiple_choice, Fields};
use crate::rows::read_rows;
use crate::task::Examples;
use anyhow::Result;
use std::path::Path;

pub fn read(path: &Path) -> Result<Examples> {
    multiple_choice(read_rows(path, None)?, |r| {
        let f = Fields::new(r, "kmmlu", "question, answer (1-4), A, B, C, D");
        let context = format!(
            "{}\nA. {}\nB. {}\nC. {}\nD. {}\n정답：",
            f.str("question")?.trim(),
            f.str("A")?,
            f.str("B")?,
            f.str("C")?,
            f.str("D")?
        );
        mc(r, String::new(), context, letters(4), f.int("answer")? - 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layouts::test_files;

    #[test]
    fn kmmlu_prompt_and_one_based_answer() {
        let d = tempfile::tempdir().unwrap();
        let p = test_files::write(
            d.path(),
            "Accounting-test.csv",
            "question,answer,A,B,C,D,Category,Human Accuracy\n\" 복식부기의 원리는? \",2,자산,거래의 양면,세금,현금,Accounting,0.5\n",
        );
        let Examples::MultipleChoice(v) = read(&p).unwrap() else { panic!() };
        assert_eq!(v[0].context, "복식부기의 원리는?\nA. 자산\nB. 거래의 양면\nC. 세금\nD. 현금\n정답：");
        assert_eq!(v[0].choices, vec!["A", "B", "C", "D"]);
        assert_eq!(v[0].gold, 1);
        let p = test_files::write(d.path(), "bad.csv", "question,answer,A,B,C,D\nq,5,a,b,c,d\n");
        assert!(read(&p).unwrap_err().to_string().contains("gold index 4 is out of range for 4 choices"));
    }
}
